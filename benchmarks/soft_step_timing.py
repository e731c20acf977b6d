"""Where a decode step's time goes with soft thinking: the soft step's parts inside the
engine's worker, against plain decoding measured in the same run.

    .venv/bin/python benchmarks/soft_step_timing.py [--batch 128] [--rounds 2] [--max-tokens 64]

Runs the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that the
worker's methods can be timed; each round runs plain greedy, soft (replace, top_k 10) and
noisy soft (Gumbel tau 0.5, sampled emission) requests back to back. Prints, per kind, the
wall time per engine step and the milliseconds per step spent in each timed part
(``CompiledSoftStep.__call__``: the compiled step on CPU, inside ``run``;
``Sampler.sample``: vLLM's own sampling, which steps whose rows are all soft skip).
"""

import argparse
import collections
import functools
import os
import time

TIMED = {
    "vllm_soft.worker": ("SoftThinkingRunner", ["inject", "plan", "run", "commit"]),
    "vllm_soft.soft_step": ("CompiledSoftStep", ["__call__"]),
    "vllm.v1.sample.sampler": ("Sampler", ["sample"]),
    "vllm.v1.worker.gpu_model_runner": ("GPUModelRunner", ["execute_model", "sample_tokens", "_preprocess", "_sample"]),
}


def instrument(totals: dict, counts: dict) -> None:
    """Wrap the timed methods with wall-clock accumulators."""
    import importlib

    for module_name, (class_name, methods) in TIMED.items():
        cls = getattr(importlib.import_module(module_name), class_name)
        for name in methods:
            original = getattr(cls, name)
            label = f"{class_name}.{name}"

            @functools.wraps(original)
            def timed(*args, __original=original, __label=label, **kwargs):
                start = time.perf_counter()
                try:
                    return __original(*args, **kwargs)
                finally:
                    totals[__label] += time.perf_counter() - start
                    counts[__label] += 1

            setattr(cls, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    from vllm_soft.models import resolve_model
    from vllm_soft.runtime import configure_cpu_threads, resolve_dtype

    configure_cpu_threads()
    from vllm import LLM, SamplingParams

    totals, counts = collections.defaultdict(float), collections.defaultdict(int)
    instrument(totals, counts)
    llm = LLM(model=str(resolve_model(args.model)), dtype=resolve_dtype("auto"), enforce_eager=True, max_model_len=1024,
              gpu_memory_utilization=0.3, seed=0, max_num_seqs=max(args.batch, 32),
              additional_config={"soft_thinking": {}})
    prompts = [[{"role": "user", "content": f"What is {i % 10} + {(3 * i) % 10}? Explain."}] for i in range(args.batch)]
    common = dict(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    kinds = {
        "plain": SamplingParams(**common),
        "soft": SamplingParams(**common, extra_args={"soft_thinking": {"top_k": 10}}),
        "noisy": SamplingParams(**common, seed=0, extra_args={
            "soft_thinking": {"top_k": 10, "noise": "gumbel", "tau": 0.5, "emit": "sample"}}),
    }
    llm.chat(prompts[:2], kinds["soft"], use_tqdm=False)  # warm-up
    for round_index in range(args.rounds):
        for name, params in kinds.items():
            totals.clear()
            counts.clear()
            start = time.perf_counter()
            llm.chat(prompts, params, use_tqdm=False)
            wall = time.perf_counter() - start
            steps = max(counts["GPUModelRunner.execute_model"], 1)
            print(f"round {round_index} {name}: {1e3 * wall / steps:.2f} ms per step ({steps} steps)", flush=True)
            for label in sorted(totals):
                print(f"    {label:34s} {1e3 * totals[label] / steps:7.3f} ms per step", flush=True)


if __name__ == "__main__":
    main()
