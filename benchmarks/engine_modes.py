"""Stock vLLM on the default model: start-up time and decode throughput, eager vs torch.compile.

    .venv/bin/python benchmarks/engine_modes.py [--model smollm2-135m] [--batch 32] [--max-tokens 128]

Both engines answer the same batch of chat prompts greedily; the compiled engine is
reported as a ratio against the eager one (the mode tests and the demo use on CPU).
This is also the baseline the soft-thinking benchmarks compare against.
"""

import argparse
import json
import time


def measure(model_path: str, prompts: list, max_tokens: int, enforce_eager: bool, dtype: str) -> dict:
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(
        model=model_path, dtype=dtype, enforce_eager=enforce_eager, max_model_len=1024, gpu_memory_utilization=0.3, seed=0
    )
    startup_s = time.perf_counter() - start
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.chat(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.chat(prompts, params, use_tqdm=False)
    generate_s = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    llm.llm_engine.engine_core.shutdown()
    return {"startup_s": round(startup_s, 1), "generate_s": round(generate_s, 2), "tokens_per_s": round(tokens / generate_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto", help="auto: bf16 with bf16 units (or CUDA), else float32")
    args = parser.parse_args()

    from vllm_soft.models import resolve_model
    from vllm_soft.runtime import configure_cpu_threads, resolve_dtype

    configure_cpu_threads()
    args.dtype = resolve_dtype(args.dtype)
    model_path = resolve_model(args.model)
    prompts = [[{"role": "user", "content": f"What is {i % 10} + {(3 * i) % 10}? Explain."}] for i in range(args.batch)]
    results = {}
    for label, eager in (("eager", True), ("compiled", False)):
        results[label] = measure(model_path, prompts, args.max_tokens, eager, args.dtype)
        print(f"[bench] {label}: {results[label]}", flush=True)
    ratio = results["compiled"]["tokens_per_s"] / results["eager"]["tokens_per_s"]
    summary = {"model": args.model, "batch": args.batch, "max_tokens": args.max_tokens, "dtype": args.dtype, **results}
    summary["compiled_over_eager_throughput"] = round(ratio, 3)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
