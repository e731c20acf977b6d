"""Tensor parallelism on CPU (one core per rank): a TP-2 engine gives the soft traces and
the weights checksum of a TP-1 engine. Each rank runs the soft step on its own copy of the
logits, so this holds only if the draws are the same on every rank (stateless, from
(seed, step)) and the checksum counts each shard once and each replica once."""

import os

import pytest
from in_process import engine_in_this_process
from vllm import LLM, SamplingParams, TokensPrompt

from rollout.weights import combine_rank_checksums
from vllm_soft.trace import soft_trace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores (one per rank)"),
]


def _engine(path, tensor_parallel_size: int) -> LLM:
    return LLM(
        model=str(path), dtype="float32", enforce_eager=True, max_model_len=256, kv_cache_memory_bytes=1 << 26, seed=0,
        tensor_parallel_size=tensor_parallel_size, additional_config={"soft_thinking": {}},
        worker_extension_cls="rollout.weights.WeightSync",
    )


def test_tensor_parallel_2_gives_the_traces_and_checksum_of_one_rank(tiny_model_path, monkeypatch):
    import vllm.envs as envs

    envs.disable_envs_cache()  # an engine started earlier in this process froze vLLM's view of the environment
    first, second = sorted(os.sched_getaffinity(0))[:2]
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", f"{first}|{second}")  # one core per rank
    two = _engine(tiny_model_path, 2)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", f"{first}-{second}")
    with engine_in_this_process():  # no processes of its own to start (~25 s)
        one = _engine(tiny_model_path, 1)
    try:
        prompts = [TokensPrompt(prompt_token_ids=[1 + i, 20 + 3 * i, 7]) for i in range(8)]
        params = [
            SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True, seed=i, extra_args={"soft_thinking": knobs})
            for i, knobs in enumerate([{"noise": "gumbel", "tau": 0.5, "emit": "sample"}, {"noise": "dirichlet", "emit": "sample"},
                                       {"mode": "add", "top_k": 5}, {}] * 2)
        ]
        for a, b in zip(two.generate(prompts, params, use_tqdm=False), one.generate(prompts, params, use_tqdm=False)):
            a, b = a.outputs[0], b.outputs[0]
            assert list(a.token_ids) == list(b.token_ids)
            for step, other in zip(soft_trace(a), soft_trace(b), strict=True):
                assert (step["token_ids"], step["emitted"]) == (other["token_ids"], other["emitted"])
                # 1e-3: the all-reduce adds shards in another order, free-running soft inputs feed
                # that float32 rounding back, noise at tau 0.5 doubles it (measured up to 2e-4).
                assert step["weights"] == pytest.approx(other["weights"], abs=1e-3)

        per_rank = two.collective_rpc("weights_checksum")
        assert len(per_rank) == 2 and all(sharded[0] > 0 for sharded, _ in per_rank)
        combined, whole = combine_rank_checksums(per_rank), combine_rank_checksums(one.collective_rpc("weights_checksum"))
        assert combined[0] == whole[0]
        assert combined[1:] == pytest.approx(whole[1:], rel=1e-9)
    finally:
        two.llm_engine.engine_core.shutdown()
        one.llm_engine.engine_core.shutdown()
