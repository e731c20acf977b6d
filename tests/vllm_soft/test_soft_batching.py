"""Soft requests under vLLM's memory machinery: preemption, prefix caching, aborts."""

import pytest
from vllm import SamplingParams, TokensPrompt

from soft_checks import (
    assert_draws_follow_seed,
    assert_equal_unless_near_tie,
    chat_prompts,
    check_mixed_batch,
    generate,
    soft_params,
)
from vllm_soft import soft_step
from vllm_soft.params import SoftThinkingParams
from vllm_soft.trace import soft_trace

pytestmark = pytest.mark.slow


def _preemptions(llm) -> int:
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")


def test_mixed_batch_survives_preemption_with_recompute(preempting_engine, default_hf_model, default_tokenizer):
    """Soft positions of preempted requests are rebuilt from their mixtures on recompute."""
    before = _preemptions(preempting_engine)
    check_mixed_batch(preempting_engine, default_hf_model, default_tokenizer, max_tokens=32)
    assert _preemptions(preempting_engine) > before, "the KV cache was meant to force preemptions"


LONG_CONTEXT = " ".join(f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(40))


def test_soft_blocks_are_never_served_by_token_hash(tiny_engine, default_tokenizer):
    """Prompt blocks are shared; blocks holding soft positions are not, even for a prompt
    with exactly the same token ids (the soft tokens as placeholders). The tiny model
    (SmolLM2's tokenizer): what is checked is the cache, not the model."""
    block = tiny_engine.llm_engine.vllm_config.cache_config.block_size
    prompt = default_tokenizer.apply_chat_template(
        [{"role": "user", "content": LONG_CONTEXT + " Which facts mention 7?"}],
        add_generation_prompt=True, tokenize=True, return_dict=False,
    )
    assert len(prompt) > 2 * block, "the prompt must fill whole blocks"
    shared_prompt_tokens = len(prompt) // block * block
    soft = soft_params(2 * block, top_k=8)
    (first,) = generate(tiny_engine, [prompt], soft)
    placeholders = prompt + list(first.token_ids)  # the soft tokens as ordinary tokens
    follow_up = [
        (placeholders, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)),
        (placeholders, soft_params(16, top_k=3)),
        (prompt, soft_params(2 * block, top_k=4, mode="add")),
    ]

    for prompt_ids, params in follow_up:
        tiny_engine.reset_prefix_cache()
        cold_tokens, cold_hits, cold_trace = _generate_counting_cache_hits(tiny_engine, prompt_ids, params)
        tiny_engine.reset_prefix_cache()
        generate(tiny_engine, [prompt], soft)  # the cache now holds soft blocks for these token ids
        warm_tokens, warm_hits, warm_trace = _generate_counting_cache_hits(tiny_engine, prompt_ids, params)
        assert warm_tokens == cold_tokens
        # Cached prompt KV was computed in another batch shape: float32 rounding differs by
        # up to ~1e-4 on some CPUs; a soft block served by token hash would differ by far more.
        assert_same_trace(warm_trace, cold_trace, tolerance=1e-3)
        assert cold_hits == 0
        assert warm_hits == shared_prompt_tokens, "exactly the whole prompt blocks are shared"


def _generate_counting_cache_hits(llm, prompt_ids, params):
    (output,) = llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)], params, use_tqdm=False)
    completion = output.outputs[0]
    return list(completion.token_ids), output.num_cached_tokens, soft_trace(completion)


def _soft_state(llm) -> dict:
    """What the plugin still holds, in the scheduler and the worker (in-process engine)."""
    core = llm.llm_engine.engine_core.engine_core
    runner = core.model_executor.driver_worker.worker.model_runner
    return {
        "worker_requests": list(runner.vllm_soft.requests),
        "scheduler_traces": list(core.scheduler.__dict__.get("vllm_soft_traces", {})),
    }


def test_aborted_soft_requests_leave_nothing_behind(inprocess_tiny_engine):
    """1,000 soft requests aborted mid-decode, in waves: the plugin frees them all."""
    llm = inprocess_tiny_engine
    engine = llm.llm_engine
    wave_size = min(250, engine.vllm_config.scheduler_config.max_num_seqs)
    params = soft_params(400, top_k=4)
    for wave in range(-(-1000 // wave_size)):
        request_ids = [f"abort-{wave}-{i}" for i in range(wave_size)]
        for i, request_id in enumerate(request_ids):
            engine.add_request(request_id, TokensPrompt(prompt_token_ids=[1 + i % 97, 2 + wave, 3]), params)
        decoding = set()
        while len(decoding) < len(request_ids):
            decoding.update(o.request_id for o in engine.step() if o.outputs and o.outputs[0].token_ids)
        held = _soft_state(llm)
        assert len(held["worker_requests"]) == wave_size
        # These requests stream (output kind CUMULATIVE): their rows leave the scheduler every step.
        assert set(held["scheduler_traces"]) <= set(held["worker_requests"])
        engine.abort_request(request_ids)
    # vLLM tells the worker which requests finished at its next step: run one more request.
    assert len(generate(llm, [[5, 6, 7]], soft_params(4))[0].token_ids) == 4
    held = _soft_state(llm)
    assert held["scheduler_traces"] == []
    assert not [r for r in held["worker_requests"] if "abort" in r], "aborted requests still held"
    assert len(held["worker_requests"]) <= 1  # at most the request just finished, freed next step


def test_seeded_requests_keep_their_random_streams_through_chunked_prefill(default_engine, default_tokenizer):
    """12 long prompts (> the 4096-token step budget together) force partial prefill chunks,
    whose samples vLLM discards and whose generators must rewind: seeded plain and soft
    requests give in the batch exactly what they give alone."""
    prompts = [
        default_tokenizer.apply_chat_template(
            [{"role": "user", "content": LONG_CONTEXT + f" Which facts mention {i}?"}],
            add_generation_prompt=True, tokenize=True, return_dict=False,
        )
        for i in range(12)
    ]
    assert sum(map(len, prompts)) > default_engine.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    params = [
        SamplingParams(temperature=1.0, max_tokens=8, seed=i, extra_args=(
            {"soft_thinking": {"emit": "sample", "noise": "dirichlet"}} if i % 2 else None))
        for i in range(12)
    ]
    batched = generate(default_engine, prompts, params)
    for prompt, param, completion in zip(prompts, params, batched):
        (alone,) = generate(default_engine, [prompt], param)
        assert list(completion.token_ids) == list(alone.token_ids)
        # Same draws, same supports and tokens; Dirichlet noise amplifies the float32 rounding of
        # chunked vs whole prefill into the weights (measured up to 1.1e-4 on an AVX-512 CPU,
        # 2.9e-3 on an AVX2 one). Another random stream would move them by tenths.
        assert_same_trace(soft_trace(completion), soft_trace(alone), tolerance=1e-2)


def assert_same_trace(trace, other, tolerance=1e-4):
    """Same steps, supports and emissions; weights equal up to batch-composition numerics
    (compared by token: two near-equal probabilities may rank the other way round)."""
    assert [(e["position"], sorted(e["token_ids"]), e["emitted"]) for e in trace] == [
        (e["position"], sorted(e["token_ids"]), e["emitted"]) for e in other
    ]
    for entry, other_entry in zip(trace, other):
        weights, other_weights = dict(zip(entry["token_ids"], entry["weights"])), dict(zip(other_entry["token_ids"], other_entry["weights"]))
        assert [weights[t] for t in sorted(weights)] == pytest.approx([other_weights[t] for t in sorted(weights)], abs=tolerance)


SEEDED_SOFT_KNOBS = [
    {"noise": "gumbel", "tau": 0.5, "emit": "sample"},
    {"noise": "dirichlet", "alpha": 1.0, "emit": "sample"},
    {"emit": "sample", "temperature": 1.0, "mode": "add", "scale": 0.5},
    {"noise": "gaussian", "sigma": 0.5, "emit": "sample"},
    {"multiplex": 3, "emit": "sample"},
]


def _mixed_params(count: int, max_tokens: int) -> tuple[list[SamplingParams], list[int]]:
    """Seeded soft requests (every 4th; noise and sampled emission) among plain greedy,
    seeded plain sampling and unseeded noisy soft requests. Returns params and the seeded indices."""
    params, seeded = [], []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            knobs = SEEDED_SOFT_KNOBS[(i // 4) % len(SEEDED_SOFT_KNOBS)]
            params.append(SamplingParams(temperature=1.0, max_tokens=max_tokens, ignore_eos=True, seed=1000 + i,
                                         extra_args={"soft_thinking": knobs}))
            seeded.append(i)
        elif kind == 1:
            params.append(SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
        elif kind == 2:
            params.append(SamplingParams(temperature=0.8, max_tokens=max_tokens, ignore_eos=True, seed=i))
        else:
            params.append(soft_params(max_tokens, noise="dirichlet", emit="sample"))
    return params, seeded


def _check_seeded(model, prompts, params, seeded, completions, alone_engine) -> None:
    """Each seeded soft request used the draws of (its seed, step) at every step, and gives
    alone the tokens it gave in the batch (up to a sampling near-tie, after which free
    trajectories may part)."""
    for i in seeded:
        knobs = SoftThinkingParams().with_overrides(params[i].extra_args["soft_thinking"])
        checked = assert_draws_follow_seed(model, prompts[i], completions[i], knobs, params[i].seed)
        (alone,) = generate(alone_engine, [prompts[i]], params[i])
        checked = min(checked, assert_draws_follow_seed(model, prompts[i], alone, knobs, params[i].seed))
        # A support cut (top-p, min-p) that float32 rounding moves between the runs changes
        # the trajectory too; both runs were checked against the reference on their own.
        batched_trace, alone_trace = soft_trace(completions[i]), soft_trace(alone)
        same_support = [a["token_ids"] == b["token_ids"] for a, b in zip(batched_trace, alone_trace)]
        checked = min(checked, same_support.index(False) if False in same_support else len(same_support))
        assert list(completions[i].token_ids)[:checked] == list(alone.token_ids)[:checked]
        assert_same_trace(batched_trace[:checked], alone_trace[:checked], tolerance=1e-3)


def test_seeded_soft_draws_are_the_same_alone_and_in_a_batch_of_64(default_engine, default_hf_model, default_tokenizer):
    """Noise and sampled emission of soft step t depend only on (seed, t), checked against
    the draws themselves, inside a batch of 64 mixed requests and alone. Weights agree to
    1e-3, not bit for bit: batch composition changes float32 logits in their last digits,
    free-running steps feed that back and Gumbel noise at tau 0.5 doubles it (measured up
    to 1.5e-4); another draw would move them by ~0.1."""
    prompts = chat_prompts(default_tokenizer, 64)
    params, seeded = _mixed_params(64, 16)
    completions = generate(default_engine, prompts, params)
    # Every other seeded request (8, every knob set) is checked: each check runs it alone again.
    _check_seeded(default_hf_model, prompts, params, seeded[::2], completions, default_engine)


def test_seeded_soft_draws_survive_preemption(preempting_engine, default_hf_model, default_tokenizer):
    """The same after the scheduler preempts and recomputes requests (their soft positions
    rebuilt from the records): the draws continue from the recorded step count."""
    prompts = chat_prompts(default_tokenizer, 24)
    params, seeded = _mixed_params(24, 32)
    before = _preemptions(preempting_engine)
    completions = generate(preempting_engine, prompts, params)
    assert _preemptions(preempting_engine) > before, "the KV cache was meant to force preemptions"
    _check_seeded(default_hf_model, prompts, params, seeded, completions, preempting_engine)


def test_soft_step_buffers_exist_during_vllm_memory_profiling(inprocess_tiny_engine, monkeypatch):
    """vLLM sizes the KV cache from the peak of its profiling run: the soft step runs there
    for max_num_seqs rows, and its buffers stay (no request state is left behind). On CPU
    the step is compiled and needs no vocabulary-sized workspace."""
    core = inprocess_tiny_engine.llm_engine.engine_core.engine_core
    runner = core.model_executor.driver_worker.worker.model_runner
    soft = runner.vllm_soft
    soft._workspace = None
    held = dict(soft.requests)  # a request finished by an earlier test is freed at the next step
    step, rows = soft_step.soft_step, []
    monkeypatch.setattr(soft_step, "soft_step", lambda logits, *args, **kwargs: rows.append(len(logits)) or step(logits, *args, **kwargs))
    runner.profile_run()
    assert rows == [runner.max_num_reqs]
    assert soft.compiled is not None, "the compiled soft step is in use on CPU"
    assert soft._workspace is None
    assert soft.pending_SH.shape[0] >= runner.max_num_reqs
    assert soft.requests == held
    assert len(generate(inprocess_tiny_engine, [[5, 6, 7]], soft_params(4))[0].token_ids) == 4


def test_a_pushed_saturated_gate_decodes_greedily(inprocess_tiny_engine, default_tokenizer):
    """HRPO's gate with lambda -> +inf keeps the emitted token's embedding (a = 1): gated
    argmax decoding is greedy decoding token for token. The gate arrives as a weight push's
    ``soft_gate.*`` tensors (alone: the model's weights stay)."""
    import torch

    from vllm_soft.gate import GATE_PREFIX, fresh_gate, gate_state_dict

    core = inprocess_tiny_engine.llm_engine.engine_core.engine_core
    runner = core.model_executor.driver_worker.worker.model_runner
    soft = runner.vllm_soft
    tensors = gate_state_dict(fresh_gate(soft.hidden_size))
    tensors["lambda"] = torch.full_like(tensors["lambda"], 1e4)
    runner.reload_weights(weights_iterator=iter([(GATE_PREFIX + name, t) for name, t in tensors.items()]))
    try:
        assert torch.equal(soft.gate().lambda_H, tensors["lambda"])
        prompts = chat_prompts(default_tokenizer, 16)
        greedy = generate(inprocess_tiny_engine, prompts,
                          SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, logprobs=2))
        gated = generate(inprocess_tiny_engine, prompts, soft_params(32, mode="gate", top_k=15))
        for plain, completion in zip(greedy, gated):
            trace = soft_trace(completion)
            assert len(trace) == 32 and all(entry["gate_retention"] == 1.0 for entry in trace)
            # The latent's remainder sqrt(1e-8) = 1e-4 of it can flip only a near-tie.
            assert_equal_unless_near_tie(completion, plain)
    finally:
        soft._gate = None  # later tests get the folder's (fresh) gate again
