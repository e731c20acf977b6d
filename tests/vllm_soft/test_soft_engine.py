"""Soft thinking inside a real vLLM engine (CPU, float32), checked against the reference.

Free-running trajectories of two implementations may part at near-ties, so soft
requests are checked teacher-forced: the reference rebuilds the inputs from the engine's
trace and must find, at every soft step, the same support and weights.
"""

import pytest
from vllm import SamplingParams, TokensPrompt

from soft_checks import assert_replays, chat_prompts, check_mixed_batch, check_top_k_1_is_greedy, generate, soft_params
from vllm_soft.params import SoftThinkingParams
from reference import predicted_end_step
from vllm_soft.trace import soft_summary, soft_trace

pytestmark = pytest.mark.slow

@pytest.mark.parametrize("engine_name", ["tiny_engine", "default_engine"])
def test_top_k_1_is_greedy(engine_name, request, default_tokenizer):
    check_top_k_1_is_greedy(request.getfixturevalue(engine_name), default_tokenizer)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_teacher_forced_replay_matches_reference(mode, default_engine, default_hf_model, default_tokenizer):
    """16 prompts x 32 tokens on the default model: support and weights at every soft step."""
    prompts = chat_prompts(default_tokenizer, 16)
    completions = generate(default_engine, prompts, soft_params(32, mode=mode, scale=0.5))
    for prompt_ids, completion in zip(prompts, completions):
        trace, _ = assert_replays(default_hf_model, prompt_ids, completion)
        assert len(trace) == 32
        assert max(len(e["token_ids"]) for e in trace) > 1, "the check needs real mixtures"


def test_mixed_batch_soft_and_plain_with_prefix_caching(default_engine, default_hf_model, default_tokenizer):
    """24 mixed requests in one generate() whose prompts hit the prefix cache (prefix caching
    is on; one plain token per prompt filled it) and everything still checks out."""
    generate(default_engine, chat_prompts(default_tokenizer, 24), SamplingParams(temperature=0.0, max_tokens=1))
    assert check_mixed_batch(default_engine, default_hf_model, default_tokenizer) > 0, "the prompts hit the cache"


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
        trace, reference = assert_replays(default_hf_model, prompt_ids, completion)
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
