"""Decode throughput of soft thinking against plain decoding, measured in the same run.

    .venv/bin/python benchmarks/soft_decode.py [--batches 1 8 32 128] [--max-tokens 64] [--rounds 3]

On the same prompts (eager, ignore_eos; --dtype auto: bf16 where the CPU has bf16 units
or on CUDA, float32 elsewhere), for each batch size:
  plain   - plain greedy requests on an engine with soft thinking enabled
  soft    - the same engine, every request soft (replace, top_k 10, built-in knobs otherwise)
  soft_noisy - every request soft with Gumbel noise (tau 0.5) and sampled emission, seeded
  multiplex - every request soft with Multiplex Thinking (4 draws, sampled emission), seeded
  gaussian - every request soft with Gaussian noise on the concept (sigma 0.5), seeded
  hf_soft - a transformers decode loop with a KV cache running the same soft step
            (vllm_soft.soft_math), as research code does today
  stock   - (once, at the largest batch) plain requests on an engine without soft
            thinking: what the patches cost a plain request
vLLM rows are the median of --rounds runs, the three kinds back to back within each round
(in rotating order); the soft/plain ratios are the median over rounds of each round's
ratio, so slow drifts of a shared machine cancel. Prints a Markdown table and writes JSON
and a PNG into --out.
"""

import argparse
import json
import statistics
import time
from pathlib import Path


def make_prompts(count: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"What is {i % 10} + {(3 * i) % 10}? Explain."}] for i in range(count)]


def vllm_tokens_per_second(llm, prompts, params) -> float:
    start = time.perf_counter()
    outputs = llm.chat(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed


def hf_soft_tokens_per_second(model, tokenizer, prompts, max_tokens: int, top_k: int) -> float:
    """Batched transformers decode loop, KV cache on, soft step from vllm_soft.soft_math."""
    import torch

    from vllm_soft import soft_math
    from vllm_soft.params import SoftThinkingParams

    knobs = SoftThinkingParams(top_k=top_k)
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    embed = model.get_input_embeddings()
    rows = len(prompts)

    def knob(value, dtype):
        return torch.full((rows,), value, dtype=dtype)

    start = time.perf_counter()
    with torch.inference_mode():
        mask = batch.attention_mask
        out = model(input_ids=batch.input_ids, attention_mask=mask, use_cache=True)
        for _ in range(max_tokens):
            dist = soft_math.filter_distribution(
                out.logits[:, -1],
                knob(knobs.temperature, torch.float32),
                knob(knobs.top_k, torch.long),
                knob(knobs.top_p, torch.float32),
                knob(knobs.min_p, torch.float32),
            )
            concept = soft_math.concept_embeddings(dist.token_ids_BK, dist.weights_BK, embed)
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            out = model(
                inputs_embeds=concept.to(model.dtype).unsqueeze(1),
                attention_mask=mask,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
    return rows * max_tokens / (time.perf_counter() - start)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted(int(b) for b in results["tokens_per_s"])
    series = ["plain", "soft", "soft_noisy", "multiplex", "gaussian", "hf_soft"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        values = [results["tokens_per_s"][str(b)].get(name, 0.0) for b in batches]
        ax.bar([j + i * width for j in range(len(batches))], values, width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set_ylabel("tokens/s")
    ax.set_title(f"soft vs plain decode, {results['model']}, {results['max_tokens']} new tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--dtype", default="auto", help="auto: bf16 with bf16 units (or CUDA), else float32")
    parser.add_argument("--hf-max-batch", type=int, default=32, help="largest batch for the transformers loop")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    from vllm_soft.models import resolve_model
    from vllm_soft.runtime import configure_cpu_threads, resolve_dtype

    configure_cpu_threads()
    dtype = resolve_dtype(args.dtype)
    print(f"dtype: {dtype}", flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    model_path = resolve_model(args.model)
    largest = max(args.batches)
    engine = dict(
        model=model_path, dtype=dtype, enforce_eager=True, max_model_len=1024,
        gpu_memory_utilization=0.3, seed=0, max_num_seqs=max(largest, 32),
    )
    plain = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    soft = SamplingParams(
        temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True,
        extra_args={"soft_thinking": {"top_k": args.top_k}},
    )
    soft_noisy = SamplingParams(
        temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True, seed=0,
        extra_args={"soft_thinking": {"top_k": args.top_k, "noise": "gumbel", "tau": 0.5, "emit": "sample"}},
    )
    seeded = dict(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True, seed=0)
    multiplex = SamplingParams(**seeded, extra_args={"soft_thinking": {"top_k": args.top_k, "multiplex": 4, "emit": "sample"}})
    gaussian = SamplingParams(**seeded, extra_args={"soft_thinking": {"top_k": args.top_k, "noise": "gaussian", "emit": "sample"}})
    tokens_per_s: dict[str, dict[str, float]] = {str(b): {} for b in args.batches}
    # Median over rounds of (kind / plain) tokens/s, each round's runs back to back.
    ratios: dict[str, dict[str, float]] = {str(b): {} for b in args.batches}

    llm = LLM(**engine)
    llm.chat(make_prompts(2), SamplingParams(max_tokens=4), use_tqdm=False)
    stock = statistics.median(vllm_tokens_per_second(llm, make_prompts(largest), plain) for _ in range(args.rounds))
    llm.llm_engine.engine_core.shutdown()
    del llm

    llm = LLM(**engine, additional_config={"soft_thinking": {}})
    llm.chat(make_prompts(2), soft, use_tqdm=False)
    kinds = {"plain": plain, "soft": soft, "soft_noisy": soft_noisy, "multiplex": multiplex, "gaussian": gaussian}
    for batch in args.batches:
        prompts = make_prompts(batch)
        runs = {name: [] for name in kinds}
        for round_index in range(args.rounds):
            names = list(kinds)
            names = names[round_index % len(names) :] + names[: round_index % len(names)]  # no kind always runs first
            for name in names:
                runs[name].append(vllm_tokens_per_second(llm, prompts, kinds[name]))
        for name, values in runs.items():
            tokens_per_s[str(batch)][name] = statistics.median(values)
            print(f"batch {batch} {name} rounds: " + " ".join(f"{v:.1f}" for v in values), flush=True)
        for name in list(kinds)[1:]:  # paired within each round: drifts of the machine cancel
            ratios[str(batch)][name] = statistics.median(v / p for v, p in zip(runs[name], runs["plain"]))
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.1f}" for k, v in tokens_per_s[str(batch)].items())
              + "; paired ratios " + ", ".join(f"{k} {v:.3f}" for k, v in ratios[str(batch)].items()), flush=True)
    llm.llm_engine.engine_core.shutdown()
    del llm

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    hf_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
    hf_soft_tokens_per_second(hf_model, tokenizer, make_prompts(2), 4, args.top_k)  # warm-up
    for batch in args.batches:
        if batch <= args.hf_max_batch:
            value = hf_soft_tokens_per_second(hf_model, tokenizer, make_prompts(batch), args.max_tokens, args.top_k)
            tokens_per_s[str(batch)]["hf_soft"] = value
            print(f"batch {batch}: hf_soft {value:.1f}", flush=True)

    results = {
        "model": args.model, "dtype": dtype, "max_tokens": args.max_tokens, "rounds": args.rounds, "top_k": args.top_k,
        "stock_plain_at_largest_batch": round(stock, 1),
        "tokens_per_s": {b: {k: round(v, 1) for k, v in row.items()} for b, row in tokens_per_s.items()},
        "ratio_to_plain": {b: {k: round(v, 3) for k, v in row.items()} for b, row in ratios.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soft_decode.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "soft_decode.png")

    print(f"\nstock vLLM (no soft thinking) plain at batch {largest}: {stock:.1f} tokens/s "
          f"(patched engine plain: {tokens_per_s[str(largest)]['plain']:.1f})")
    compared = list(kinds)[1:]
    print("\n| batch | plain tok/s | " + " | ".join(f"{k} tok/s | {k}/plain" for k in compared)
          + " | transformers soft tok/s | soft/transformers |")
    print("|---:|---:|" + "---:|---:|" * len(compared) + "---:|---:|")
    for batch in args.batches:
        row = tokens_per_s[str(batch)]
        hf = row.get("hf_soft")
        hf_cells = f"{hf:.1f} | {row['soft'] / hf:.2f}x" if hf else "- | -"
        ratio = ratios[str(batch)]
        cells = " | ".join(f"{row[k]:.1f} | {ratio[k]:.2f}x" for k in compared)
        print(f"| {batch} | {row['plain']:.1f} | {cells} | {hf_cells} |")
    print(f"\nwrote {args.out / 'soft_decode.json'} and {args.out / 'soft_decode.png'}")


if __name__ == "__main__":
    main()
