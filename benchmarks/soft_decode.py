"""Decode throughput of soft requests against plain ones, measured in the same run.

    .venv/bin/python benchmarks/soft_decode.py [--model smollm2-135m] [--batch 32] [--max-tokens 128]

Three measurements on the same prompts (greedy, ignore_eos, bf16, eager):
  stock  - an engine without soft thinking (the plugin is loaded but inert), plain requests
  plain  - an engine with soft thinking enabled, plain requests (the cost of the patches)
  soft   - the same engine, every request soft (replace, built-in knobs), and soft with
           Dirichlet noise and sampled emission (the RL setting)
Ratios are tokens/s against `stock`.
"""

import argparse
import json
import time


def tokens_per_second(llm, prompts, params) -> float:
    from vllm import SamplingParams

    llm.chat(prompts[:2], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.chat(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    from vllm_soft.models import resolve_model
    from vllm_soft.runtime import configure_cpu_threads

    configure_cpu_threads()
    from vllm import LLM, SamplingParams

    model = resolve_model(args.model)
    prompts = [[{"role": "user", "content": f"What is {i % 10} + {(3 * i) % 10}? Explain."}] for i in range(args.batch)]
    engine = dict(model=model, dtype="bfloat16", enforce_eager=True, max_model_len=1024, gpu_memory_utilization=0.3, seed=0)
    plain = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)

    def soft(**knobs):
        return SamplingParams(
            temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True, extra_args={"soft_thinking": knobs}
        )

    results = {}
    llm = LLM(**engine)
    results["stock"] = tokens_per_second(llm, prompts, plain)
    llm.llm_engine.engine_core.shutdown()
    del llm
    llm = LLM(**engine, additional_config={"soft_thinking": {}})
    results["plain"] = tokens_per_second(llm, prompts, plain)
    results["soft"] = tokens_per_second(llm, prompts, soft())
    results["soft_dirichlet_sample"] = tokens_per_second(llm, prompts, soft(noise="dirichlet", emit="sample"))
    llm.llm_engine.engine_core.shutdown()
    summary = {
        "model": args.model, "batch": args.batch, "max_tokens": args.max_tokens,
        "tokens_per_s": {k: round(v, 1) for k, v in results.items()},
        "ratio_to_stock": {k: round(v / results["stock"], 3) for k, v in results.items()},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
