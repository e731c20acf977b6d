"""Soft thinking on CUDA vLLM as it ships (run on a GPU machine with `pytest -m gpu`).

What the CPU build cannot show: that a CUDA engine with soft thinking builds the V1 runner
(not Model Runner V2) and schedules synchronously, that the soft step is right on the
device, that CUDA graphs (no enforce_eager) give the eager traces, and that tensor
parallelism gives the single-GPU traces and weights checksum. Engines here run in float32
so the transformers reference (on CPU) applies; each test module starts its own engines
because GPU engines need other settings than the CPU fixtures (memory fraction, graphs).
"""

import pytest
import torch
from vllm import SamplingParams

from soft_checks import assert_replays, chat_prompts, check_top_k_1_is_greedy, generate, soft_params
from vllm_soft.trace import soft_trace

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

SOFT_KNOBS = {"mode": "replace", "top_k": 8}
NEAR_TIE = 1e-4


def _cuda_engine(path, **overrides):
    from vllm import LLM

    settings = dict(
        model=str(path), dtype="float32", max_model_len=1024, gpu_memory_utilization=0.25, seed=0,
        enforce_eager=True, additional_config={"soft_thinking": {}}, worker_extension_cls="rollout.weights.WeightSync",
    )
    return LLM(**{**settings, **overrides})


@pytest.fixture(scope="module")
def eager_engine(default_model_path):
    llm = _cuda_engine(default_model_path)
    yield llm
    llm.llm_engine.engine_core.shutdown()


def _runner_facts(worker):
    """Runs in each vLLM worker: which runner was built and whether its soft step is active."""
    runner = worker.model_runner
    kind = type(runner)
    return {
        "runner": f"{kind.__module__}.{kind.__qualname__}",
        "soft_step": getattr(runner, "vllm_soft", None) is not None,
        "async_scheduling": bool(runner.use_async_scheduling),
        # The step's one device-to-host copy goes to pinned memory, so it does not block.
        "pinned_host_copy": bool(getattr(getattr(runner, "vllm_soft", None), "pin_memory", False)),
    }


def test_cuda_engine_runs_the_soft_step_in_the_v1_runner_synchronously(eager_engine):
    config = eager_engine.llm_engine.vllm_config
    assert not config.use_v2_model_runner
    assert config.scheduler_config.async_scheduling is False
    for facts in eager_engine.collective_rpc(_runner_facts):
        assert facts == {"runner": "vllm.v1.worker.gpu_model_runner.GPUModelRunner", "soft_step": True,
                         "async_scheduling": False, "pinned_host_copy": True}


def test_top_k_1_is_greedy_on_cuda(eager_engine, default_tokenizer):
    check_top_k_1_is_greedy(eager_engine, default_tokenizer)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_teacher_forced_replay_on_cuda_matches_the_reference(mode, eager_engine, default_hf_model, default_tokenizer):
    prompts = chat_prompts(default_tokenizer, 16)
    for prompt_ids, completion in zip(prompts, generate(eager_engine, prompts, soft_params(32, mode=mode, scale=0.5))):
        trace, _ = assert_replays(default_hf_model, prompt_ids, completion)
        assert len(trace) == 32


def _assert_same_traces_unless_near_tie(completions, others) -> None:
    """Same emitted token, and its weight to 1e-4, step by step, until the first step whose
    top two weights are within NEAR_TIE (there two correct engines may choose differently)."""
    for completion, other in zip(completions, others):
        trace, other_trace = soft_trace(completion), soft_trace(other)
        assert len(trace) == len(other_trace)
        for entry, other_entry in zip(trace, other_trace):
            top = sorted(other_entry["weights"], reverse=True)[:2] + [0.0]
            if top[0] - top[1] < NEAR_TIE:
                break
            assert entry["emitted"] == other_entry["emitted"]
            weight = dict(zip(entry["token_ids"], entry["weights"]))[entry["emitted"]]
            other_weight = dict(zip(other_entry["token_ids"], other_entry["weights"]))[other_entry["emitted"]]
            assert weight == pytest.approx(other_weight, abs=1e-4)


def test_cuda_graphs_give_the_eager_soft_traces(eager_engine, default_model_path, default_hf_model, default_tokenizer):
    graphs = _cuda_engine(default_model_path, enforce_eager=False, enable_prompt_embeds=True)
    try:
        prompts = chat_prompts(default_tokenizer, 16)
        params = soft_params(32, **SOFT_KNOBS)
        graphed = generate(graphs, prompts, params)
        for prompt_ids, completion in zip(prompts, graphed):
            assert_replays(default_hf_model, prompt_ids, completion)
        _assert_same_traces_unless_near_tie(graphed, generate(eager_engine, prompts, params))
    finally:
        graphs.llm_engine.engine_core.shutdown()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tensor_parallel_2_gives_the_traces_and_checksum_of_one_gpu(eager_engine, default_model_path, default_tokenizer):
    from rollout.weights import combine_rank_checksums

    tp2 = _cuda_engine(default_model_path, tensor_parallel_size=2)
    try:
        prompts = chat_prompts(default_tokenizer, 16)
        seeded = SamplingParams(
            temperature=1.0, max_tokens=32, ignore_eos=True, seed=7,
            extra_args={"soft_thinking": {**SOFT_KNOBS, "noise": "gumbel", "tau": 0.5}},
        )
        for params in (soft_params(32, **SOFT_KNOBS), seeded):
            _assert_same_traces_unless_near_tie(generate(tp2, prompts, params), generate(eager_engine, prompts, params))
        one = combine_rank_checksums(eager_engine.collective_rpc("weights_checksum"))
        two = combine_rank_checksums(tp2.collective_rpc("weights_checksum"))
        assert two[0] == one[0]
        assert two[1:] == pytest.approx(one[1:], rel=1e-9)
    finally:
        tp2.llm_engine.engine_core.shutdown()
