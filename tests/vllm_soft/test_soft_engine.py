"""Soft thinking inside a real vLLM engine (CPU, float32), checked against the reference.

Free-running trajectories of two implementations may part at near-ties, so soft
requests are checked teacher-forced: the reference rebuilds the inputs from the engine's
trace and must find, at every soft step, the same support and weights.
"""

import pytest
from transformers import AutoTokenizer
from vllm import SamplingParams, TokensPrompt

from vllm_soft.params import SoftThinkingParams
from vllm_soft.reference import predicted_end_step, replay_trace
from vllm_soft.trace import soft_summary, soft_trace

pytestmark = pytest.mark.slow

WEIGHT_TOLERANCE = 1e-4
NEAR_TIE = 1e-4

QUESTIONS = [
    "What is {a} + {b}?",
    "What is {a} times {b}?",
    "Tom has {a} apples and buys {b} more. How many apples does he have?",
    "Is {a}{b} an even number? Explain.",
]


def chat_prompts(tokenizer, count: int) -> list[list[int]]:
    """Distinct chat prompts, tokenised with the model's chat template."""
    prompts = []
    for i in range(count):
        question = QUESTIONS[i % len(QUESTIONS)].format(a=i % 9 + 1, b=(7 * i) % 9 + 1)
        prompts.append(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    return prompts


def generate(llm, prompts, params_list):
    if isinstance(params_list, SamplingParams):
        params_list = [params_list] * len(prompts)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params_list, use_tqdm=False)
    return [o.outputs[0] for o in outputs]


def soft_params(max_tokens: int, **knobs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, extra_args={"soft_thinking": knobs})


def assert_replays(model, prompt_ids, completion, knobs: SoftThinkingParams):
    """Teacher-forced check of one soft completion against the reference."""
    trace = soft_trace(completion)
    assert trace, "a soft request must have a trace"
    assert [e["position"] for e in trace] == list(range(len(trace)))
    expected = replay_trace(model, prompt_ids, list(completion.token_ids), trace, knobs)
    for entry, reference in zip(trace, expected):
        assert set(entry["token_ids"]) == set(reference.token_ids), entry["position"]
        engine_weights = dict(zip(entry["token_ids"], entry["weights"]))
        for token, weight in zip(reference.token_ids, reference.weights):
            assert abs(engine_weights[token] - weight) <= WEIGHT_TOLERANCE, (entry["position"], token)
        if knobs.noise == "none" and entry["end_reason"] is None:
            assert entry["emitted"] == entry["token_ids"][max(range(len(entry["weights"])), key=entry["weights"].__getitem__)]
        assert completion.token_ids[entry["position"]] == entry["emitted"]
    return trace, expected


@pytest.fixture(scope="module")
def default_tokenizer(default_model_path):
    return AutoTokenizer.from_pretrained(default_model_path)


@pytest.mark.parametrize("engine_name", ["tiny_engine", "default_engine"])
def test_top_k_1_is_greedy(engine_name, request, default_tokenizer):
    """32 prompts x 64 tokens: soft decoding with top_k = 1 and no noise is greedy decoding."""
    llm = request.getfixturevalue(engine_name)
    prompts = chat_prompts(default_tokenizer, 32)
    greedy = generate(llm, prompts, SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True))
    soft = generate(llm, prompts, soft_params(64, top_k=1))
    for plain, soft_completion in zip(greedy, soft):
        assert list(soft_completion.token_ids) == list(plain.token_ids)
        assert soft_summary(soft_completion)["num_soft_steps"] == 64
        assert soft_trace(plain) == []


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_teacher_forced_replay_matches_reference(mode, default_engine, default_hf_model, default_tokenizer):
    """16 prompts x 32 tokens on the default model: support and weights at every soft step."""
    knobs = SoftThinkingParams(mode=mode, scale=0.5)
    prompts = chat_prompts(default_tokenizer, 16)
    completions = generate(default_engine, prompts, soft_params(32, mode=mode, scale=0.5))
    for prompt_ids, completion in zip(prompts, completions):
        trace, _ = assert_replays(default_hf_model, prompt_ids, completion, knobs)
        assert len(trace) == 32
        assert max(len(e["token_ids"]) for e in trace) > 1, "the check needs real mixtures"


def test_mixed_batch_soft_and_plain(default_engine, default_hf_model, default_tokenizer):
    """24 requests in one generate(): soft ones with their own knobs replay exactly; plain
    ones equal their output from the same engine alone, unless a near-tie came first."""
    prompts = chat_prompts(default_tokenizer, 24)
    knob_sets = [
        None,
        {"mode": "replace"},
        {"mode": "add", "scale": 0.3},
        None,
        {"mode": "replace", "top_k": 3, "temperature": 1.0},
        {"mode": "add", "top_p": 0.8, "min_p": 0.05},
    ]
    plain_params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)
    params = [plain_params if k is None else soft_params(24, **k) for k in (knob_sets * 4)]
    completions = generate(default_engine, prompts, params)
    for prompt_ids, completion, knobs in zip(prompts, completions, knob_sets * 4):
        if knobs is None:
            alone = generate(default_engine, [prompt_ids], plain_params)[0]
            assert_equal_unless_near_tie(completion, alone)
        else:
            assert_replays(default_hf_model, prompt_ids, completion, SoftThinkingParams().with_overrides(knobs))


def assert_equal_unless_near_tie(batched, alone):
    for step, (a, b) in enumerate(zip(batched.token_ids, alone.token_ids)):
        if a != b:
            top2 = sorted((lp.logprob for lp in alone.logprobs[step].values()), reverse=True)[:2]
            assert top2[0] - top2[1] < NEAR_TIE, f"diverged at step {step} without a near-tie"
            return
    assert len(batched.token_ids) == len(alone.token_ids)


def test_n_4_gives_four_traced_soft_samples(default_engine, default_tokenizer):
    prompts = chat_prompts(default_tokenizer, 1)
    params = SamplingParams(
        n=4, temperature=1.0, max_tokens=16, ignore_eos=True, seed=1,
        extra_args={"soft_thinking": {"emit": "sample", "noise": "dirichlet", "alpha": 1.0}},
    )
    (output,) = default_engine.generate([TokensPrompt(prompt_token_ids=prompts[0])], params, use_tqdm=False)
    assert len(output.outputs) == 4
    traces = [soft_trace(c) for c in output.outputs]
    assert all(len(t) == 16 for t in traces)
    assert len({tuple(c.token_ids) for c in output.outputs}) > 1, "sampled soft emissions should differ"
    for completion, trace in zip(output.outputs, traces):
        assert [e["emitted"] for e in trace] == list(completion.token_ids)


def test_cold_stop_fires_where_the_reference_predicts(default_engine, default_hf_model, default_tokenizer):
    """A high entropy threshold with patience 3: cold stop forces the think-end token."""
    think_end = "<|im_end|>"
    knobs = {"entropy_threshold": 1.0, "patience": 3, "think_end": think_end}
    prompts = chat_prompts(default_tokenizer, 4)
    completions = generate(default_engine, prompts, soft_params(40, **knobs))
    think_end_id = default_tokenizer.convert_tokens_to_ids(think_end)
    resolved = SoftThinkingParams(**knobs, think_end_id=think_end_id)
    fired = 0
    for prompt_ids, completion in zip(prompts, completions):
        trace, reference = assert_replays(default_hf_model, prompt_ids, completion, resolved)
        # What the policy would emit (argmax of the reference weights), before any forcing.
        argmax_tokens = [r.token_ids[0] for r in reference]
        predicted = predicted_end_step([r.entropy for r in reference], argmax_tokens, resolved)
        assert predicted is not None
        step, reason = predicted
        assert len(trace) == step + 1
        assert trace[-1]["end_reason"] == reason == soft_summary(completion)["end_reason"]
        assert completion.token_ids[step] == think_end_id
        fired += reason == "cold_stop"
    assert fired > 0


def test_max_soft_steps_budget_then_discrete(default_engine, default_tokenizer):
    prompts = chat_prompts(default_tokenizer, 2)
    completions = generate(default_engine, prompts, soft_params(20, max_soft_steps=5))
    for completion in completions:
        summary = soft_summary(completion)
        assert summary == {"num_soft_steps": 5, "end_reason": "budget", "cold_stop": False}
        assert len(completion.token_ids) == 20


@pytest.mark.parametrize(
    "knobs, knob",
    [
        ({"top_k": 0}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"mode": "blend"}, "mode"),
        ({"noise": "uniform"}, "noise"),
        ({"entropy_threshold": -1.0}, "entropy_threshold"),
        ({"think_end": "<not-a-token-at-all>"}, "think_end"),
        ({"top_k": 10**6}, "top_k"),
    ],
)
def test_bad_knobs_raise_value_error_naming_the_knob(knobs, knob, tiny_engine):
    with pytest.raises(ValueError, match=f"soft_thinking.{knob}"):
        tiny_engine.generate([TokensPrompt(prompt_token_ids=[1, 2, 3])], soft_params(4, **knobs), use_tqdm=False)
    # The engine keeps serving.
    assert len(generate(tiny_engine, [[1, 2, 3]], soft_params(4))[0].token_ids) == 4
