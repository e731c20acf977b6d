"""Checks shared by the engine tests: prompts, generation, teacher-forced replay."""

import pytest
from vllm import SamplingParams, TokensPrompt

from vllm_soft.params import SoftThinkingParams
from reference import replay_trace
from vllm_soft.trace import soft_knobs, soft_trace

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


def check_top_k_1_is_greedy(llm, tokenizer) -> None:
    """32 prompts x 64 tokens: soft decoding with top_k = 1 and no noise is greedy decoding."""
    from vllm_soft.trace import soft_summary

    prompts = chat_prompts(tokenizer, 32)
    greedy = generate(llm, prompts, SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True))
    soft = generate(llm, prompts, soft_params(64, top_k=1))
    for plain, soft_completion in zip(greedy, soft):
        assert list(soft_completion.token_ids) == list(plain.token_ids)
        assert soft_summary(soft_completion)["num_soft_steps"] == 64
        assert soft_trace(plain) == []


def fresh_gate_tensors(model) -> dict:
    """The HRPO gate every engine process draws for a model folder without one (the default
    model's), by file name: what the reference feeds gated steps through."""
    from vllm_soft.gate import fresh_gate, gate_state_dict

    return gate_state_dict(fresh_gate(model.config.hidden_size))


def assert_replays(model, prompt_ids, completion):
    """Teacher-forced check of one soft completion against the reference, with the knobs the
    engine resolved for it (``soft_knobs``: noise and think_end 'auto' decided; gated steps
    through the model folder's fresh gate; the reference also checks each step's mean a)."""
    trace = soft_trace(completion)
    assert trace, "a soft request must have a trace"
    knobs = SoftThinkingParams().with_overrides(soft_knobs(completion))
    assert [e["position"] for e in trace] == list(range(len(trace)))
    gate = fresh_gate_tensors(model) if knobs.mode == "gate" else None
    expected = replay_trace(model, prompt_ids, list(completion.token_ids), trace, knobs, gate)
    for entry, reference in zip(trace, expected):
        assert set(entry["token_ids"]) == set(reference.token_ids), entry["position"]
        engine_weights = dict(zip(entry["token_ids"], entry["weights"]))
        for token, weight in zip(reference.token_ids, reference.weights):
            assert abs(engine_weights[token] - weight) <= WEIGHT_TOLERANCE, (entry["position"], token)
        if knobs.noise == "none" and entry["end_reason"] is None and knobs.latent_token is None:
            assert entry["emitted"] == entry["token_ids"][max(range(len(entry["weights"])), key=entry["weights"].__getitem__)]
        assert completion.token_ids[entry["position"]] == entry["emitted"]
    return trace, expected


def check_mixed_batch(engine, hf_model, tokenizer, max_tokens: int = 24) -> int:
    """24 requests in one generate(), every mode: soft ones with their own knobs replay
    exactly (latents included); plain ones equal their output from the same engine alone,
    unless a near-tie came first.
    Returns how many prompt tokens the batch found in the prefix cache."""
    prompts = chat_prompts(tokenizer, 24)
    knob_sets = [
        None,
        {"mode": "replace"},
        {"mode": "add", "scale": 0.3},
        None,
        {"mode": "replace", "top_k": 3, "temperature": 1.0},
        {"mode": "add", "top_p": 0.8, "min_p": 0.05},
        {"mode": "gate", "top_k": 50, "temperature": 0.5},
        {"mode": "gate", "top_k": 4},
        {"mode": "hidden", "max_soft_steps": 4},
        {"mode": "hidden", "max_soft_steps": 5, "rescale_latent": True, "think_end": 30, "latent_token": 31},
    ]
    plain_params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=2)
    knob_sets = (knob_sets * 3)[: len(prompts)]
    params = [plain_params if k is None else soft_params(max_tokens, **k) for k in knob_sets]
    outputs = engine.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    completions = [o.outputs[0] for o in outputs]
    for prompt_ids, completion, knobs in zip(prompts, completions, knob_sets):
        if knobs is None:
            alone = generate(engine, [prompt_ids], plain_params)[0]
            assert_equal_unless_near_tie(completion, alone)
        else:
            assert_replays(hf_model, prompt_ids, completion)
    return sum(o.num_cached_tokens or 0 for o in outputs)


def assert_equal_unless_near_tie(batched, alone):
    for step, (a, b) in enumerate(zip(batched.token_ids, alone.token_ids)):
        if a != b:
            top2 = sorted((lp.logprob for lp in alone.logprobs[step].values()), reverse=True)[:2]
            assert top2[0] - top2[1] < NEAR_TIE, f"diverged at step {step} without a near-tie"
            return
    assert len(batched.token_ids) == len(alone.token_ids)


SAMPLE_NEAR_TIE = 1e-3


def assert_draws_follow_seed(model, prompt_ids, completion, knobs: SoftThinkingParams, seed: int) -> int:
    """Teacher-forced check that soft step t of a seeded request used exactly the draws of
    (seed, t): the reference's noise-free weights, perturbed with ``stateless_random``'s
    draws for (seed, t), are the trace's weights, and the emitted token is the sample those
    draws pick. Returns how many steps were checked: all of them, or up to a near-tie
    where float32 noise in the logits may change the trajectory: the uniform within
    ``SAMPLE_NEAR_TIE`` of a CDF boundary, or two candidates' probabilities that close
    (their order, which assigns each its draws, may swap)."""
    import torch

    from vllm_soft import soft_math, stateless_random

    trace = soft_trace(completion)
    expected = replay_trace(model, prompt_ids, list(completion.token_ids), trace, knobs)
    seed_B = torch.tensor([stateless_random.as_int64(seed)])
    for step, (entry, reference) in enumerate(zip(trace, expected)):
        assert entry["token_ids"] == reference.token_ids, step
        if any(a - b < SAMPLE_NEAR_TIE for a, b in zip(reference.weights, reference.weights[1:])):
            return step
        base = torch.tensor([reference.weights], dtype=torch.float64)
        step_B = torch.tensor([step])
        if knobs.noise == "gumbel":
            weights = soft_math.gumbel_log_weights(base, knobs.tau, stateless_random.gumbels(seed_B, step_B, base.shape[1])).exp()
        elif knobs.noise == "dirichlet":
            weights = soft_math.dirichlet_log_weights(base, stateless_random.gamma_draws(knobs.alpha * base, seed_B, step_B)).exp()
        elif knobs.multiplex:  # with replacement: one uniform per draw, each inverts the CDF
            uniforms = stateless_random.uniforms(seed_B, step_B, stateless_random.MULTIPLEX, knobs.multiplex)
            boundaries = torch.cumsum(base[0], 0)[:-1].tolist()
            if any(abs(b - u) < SAMPLE_NEAR_TIE for u in uniforms[0].tolist() for b in boundaries):
                return step
            keys = stateless_random.gumbels(seed_B, step_B, base.shape[1])  # unused with replacement
            draws, first = soft_math.multiplex_draws(base, uniforms, keys, torch.tensor([knobs.multiplex]), torch.tensor([True]))
            assert entry["draws"] == draws[0].tolist(), f"step {step}: not the multiplex draws of (seed, step)"
            if knobs.emit == "sample" and entry["end_reason"] is None:
                assert entry["emitted"] == entry["token_ids"][int(first[0])], f"step {step}: not the first draw"
            uniform = torch.tensor([knobs.multiplex_weights == "uniform"])
            weights = soft_math.multiplex_log_weights(base, draws, torch.tensor([True]), uniform).exp()
        else:  # no noise, or noise on the concept (its draws checked through the replay's inputs)
            weights = base
        if knobs.noise == "gaussian":
            table = model.get_input_embeddings().weight.double()
            assert entry["noise_scale"] == pytest.approx(knobs.sigma * float(table.pow(2).mean().sqrt()), rel=1e-4)
        assert entry["weights"] == pytest.approx(weights[0].tolist(), abs=1e-3), f"step {step}: not the draws of (seed, step)"
        if knobs.emit == "sample" and entry["end_reason"] is None and not knobs.multiplex:
            uniform = float(stateless_random.uniforms(seed_B, step_B, stateless_random.EMIT, 1)[0, 0])
            cdf = torch.cumsum(torch.tensor(entry["weights"], dtype=torch.float64), 0)
            boundaries = (cdf[:-1] / cdf[-1]).tolist()
            if any(abs(b - uniform) < SAMPLE_NEAR_TIE for b in boundaries):
                return step
            slot = int(soft_math.sample_slots(torch.tensor([entry["weights"]]), torch.tensor([uniform]))[0])
            assert entry["emitted"] == entry["token_ids"][slot], step
    return len(trace)
