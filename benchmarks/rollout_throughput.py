"""Rollout pool throughput against one bare vLLM engine, on the same prompts.

    .venv/bin/python benchmarks/rollout_throughput.py [--prompts 32] [--group-size 8] [--max-tokens 64] [--soft]

bare  - one vLLM engine (``LLM.generate``, n = G) in this process, no Ray, no rewards
R=1   - the rollout pool with one worker (Ray actor, continuous submission, rewards)
R=2   - the pool with two workers, half the cores each (on 2 cores this cannot be faster:
        it shows the cost of splitting)
Bare and R=1 run in alternating rounds (median reported); prints samples/s, tokens/s and
the ratio to bare; writes JSON to --out.
"""

import argparse
import json
import os
import time
from pathlib import Path


def start_bare_engine(engine_config):
    from vllm import LLM

    from vllm_soft.models import resolve_model
    from vllm_soft.runtime import configure_cpu_threads, resolve_dtype

    configure_cpu_threads()
    return LLM(
        model=str(resolve_model(engine_config.model)), dtype=resolve_dtype(engine_config.dtype), max_model_len=engine_config.max_model_len,
        enforce_eager=engine_config.enforce_eager, max_num_seqs=engine_config.max_num_seqs, seed=engine_config.seed,
        kv_cache_memory_bytes=int(engine_config.kv_cache_gib * (1 << 30)), additional_config={"soft_thinking": {}},
    )


def run_bare(llm, sampling_config, prompts) -> dict:
    from rollout.worker import sampling_params

    params = [sampling_params(sampling_config, i) for i in range(len(prompts))]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    samples = [c for o in outputs for c in o.outputs]
    return {"samples": len(samples), "tokens": sum(len(c.token_ids) for c in samples), "seconds": seconds}


def start_pool(engine_config, workers: int):
    from rollout.pool import RolloutPool
    from rollout.settings import PoolConfig

    cores = len(os.sched_getaffinity(0))
    pool_config = PoolConfig(num_workers=workers, num_cpus_per_worker=max(1, cores // workers), groups_per_call=4)
    return RolloutPool(engine_config, {"correct": 1.0}, pool_config)


def run_pool(pool, sampling_config, prompts) -> dict:
    from rollout.worker import GroupRequest

    groups = [GroupRequest(i, p, answer="0") for i, p in enumerate(prompts)]
    start = time.perf_counter()
    result = pool.generate(groups, sampling_config, progress=False)
    seconds = time.perf_counter() - start
    samples = [s for g in result for s in g]
    return {"samples": len(samples), "tokens": sum(len(s.response_token_ids) for s in samples), "seconds": seconds}


def median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["samples"] / r["seconds"])
    return {**ordered[len(ordered) // 2], "rounds_samples_per_s": [round(r["samples"] / r["seconds"], 2) for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--soft", action="store_true", help="soft thinking (emit sample, Dirichlet noise)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    import ray
    from transformers import AutoTokenizer

    from rollout.settings import EngineConfig, SamplingConfig
    from vllm_soft.models import resolve_model

    engine = EngineConfig(model=args.model, dtype="auto", kv_cache_gib=1.0, max_num_seqs=256)
    soft = {"emit": "sample", "noise": "dirichlet"} if args.soft else None
    sampling = SamplingConfig(group_size=args.group_size, temperature=1.0, max_tokens=args.max_tokens, soft_thinking=soft)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": f"What is {i % 10} + {(3 * i) % 10}?"}],
                                      tokenize=False, add_generation_prompt=True)
        for i in range(args.prompts)
    ]
    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
    # Bare engine and R = 1 pool alive together, measured in alternating rounds (idle
    # engines sleep), so machine drift hits both alike; R = 2 afterwards.
    llm, pool = start_bare_engine(engine), start_pool(engine, workers=1)
    run_bare(llm, sampling, prompts[:2]), run_pool(pool, sampling, prompts[:2])  # warm-up
    bare_runs, pool_runs = [], []
    for _ in range(args.rounds):
        bare_runs.append(run_bare(llm, sampling, prompts))
        pool_runs.append(run_pool(pool, sampling, prompts))
    llm.llm_engine.engine_core.shutdown()
    pool.shutdown()
    pool = start_pool(engine, workers=2)
    run_pool(pool, sampling, prompts[:2])
    two_runs = [run_pool(pool, sampling, prompts) for _ in range(args.rounds)]
    pool.shutdown()
    ray.shutdown()
    results = {"bare": median_run(bare_runs), "R=1": median_run(pool_runs), "R=2": median_run(two_runs)}

    bare_rate = results["bare"]["samples"] / results["bare"]["seconds"]
    print(f"\n{args.prompts} prompts x G={args.group_size}, {args.max_tokens} tokens, {'soft' if args.soft else 'plain'}")
    print("| run | samples | samples/s | tokens/s | vs bare |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        rate = r["samples"] / r["seconds"]
        r.update(samples_per_s=round(rate, 2), tokens_per_s=round(r["tokens"] / r["seconds"], 1), ratio=round(rate / bare_rate, 3))
        print(f"| {name} | {r['samples']} | {rate:.2f} | {r['tokens_per_s']:.1f} | {r['ratio']:.2f}x |")
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"rollout_throughput_{'soft' if args.soft else 'plain'}.json"
    (args.out / name).write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
