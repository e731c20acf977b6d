"""GRPO step time of vllm-soft (discrete and soft) against TRL's GRPOTrainer, same model, G, batch, lengths.

    .venv/bin/python benchmarks/grpo_step.py [--prompts 8] [--group-size 8] [--max-tokens 64] [--steps 3]

vllm-soft: ``trainer.loop.train`` on a local Ray cluster with the arith configs' layout (1
rollout engine on 2 cores, then 1 FSDP learner rank on 2 cores), the first step a warm-up; a step is rollout + learner update + weight
push (``step_s`` in metrics.jsonl). Precision ``fp32``: engine and learner float32;
``mixed``: bf16 engine, learner with float32 weights and bf16 compute (the arith configs).
TRL: ``benchmarks/trl_grpo_step.py`` in a subprocess (transformers generation, float32,
one optimizer step per P x G completions). Needs ``pip install -e .[bench]``.
Prints a Markdown table (median step, phase split, ratio to TRL); writes JSON and a PNG.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("rollout_s", "learn_s", "push_s")
RUNS = (("discrete", "fp32"), ("discrete", "mixed"), ("replace", "mixed"))  # (algorithm.mode, precision)


def vllm_soft_steps(mode: str, precision: str, args, run_dir: Path) -> list[dict]:
    """Run ``args.steps`` training steps; the metrics of the timed ones (warm-up dropped)."""
    from rollout.config import load_config
    from trainer.loop import train
    from trainer.settings import TrainConfig

    overrides = [
        f"model={args.model}", f"steps={args.steps}", f"checkpoint_every={args.steps + 1}", f"output_dir={run_dir}",
        f"engine.dtype={'float32' if precision == 'fp32' else 'bfloat16'}", "engine.max_model_len=1024",
        "engine.kv_cache_gib=1.0", "engine.max_num_seqs=128", "pool.num_workers=1", "pool.num_cpus_per_worker=2",
        f"learner.mixed_precision={precision == 'mixed'}",
        f"algorithm.mode={mode}", f"algorithm.prompts_per_step={args.prompts}",
        f"algorithm.group_size={args.group_size}", f"algorithm.max_tokens={args.max_tokens}",
        "algorithm.temperature=1.0", "eval.num_prompts=0",
    ]
    # The soft run keeps arith_soft's soft-thinking knobs (Gumbel-Softmax exploration).
    config_file = "arith_grpo.yaml" if mode == "discrete" else "arith_soft.yaml"
    config = load_config(TrainConfig, REPO / "configs" / config_file, overrides)
    return train(config, run_dir)[1:]


def trl_steps(args) -> dict:
    command = [sys.executable, str(REPO / "benchmarks" / "trl_grpo_step.py"), "--model", args.model,
               "--prompts", str(args.prompts), "--group-size", str(args.group_size),
               "--max-tokens", str(args.max_tokens), "--steps", str(args.steps - 1)]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def summarize(steps: list[dict]) -> dict:
    return {
        "step_s": statistics.median(s["step_s"] for s in steps),
        **{phase: statistics.median(s[phase] for s in steps) for phase in PHASES},
        "response_length": statistics.mean(s["response_length"] for s in steps),
        "step_seconds": [round(s["step_s"], 2) for s in steps],
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = [0.0] * len(names)
    for phase, label in (("rollout_s", "generation"), ("learn_s", "learner update"), ("push_s", "weight push")):
        values = [results[n].get(phase, 0.0) for n in names]
        ax.bar([n.replace(" ", "\n", 2) for n in names], values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("seconds per GRPO step")
    ax.set_title("GRPO step time (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="steps per run; the first is a warm-up")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    import ray

    from vllm_soft.runtime import configure_cpu_threads

    configure_cpu_threads()
    ray.init(num_cpus=max(os.cpu_count() or 1, 4), include_dashboard=False, log_to_driver=False)
    results = {}
    with tempfile.TemporaryDirectory(prefix="grpo_step_") as scratch:  # run folders are not kept
        for mode, precision in RUNS:
            name = f"vllm-soft {'discrete' if mode == 'discrete' else 'soft'} {precision}"
            run_dir = Path(scratch) / f"{mode}_{precision}"
            results[name] = summarize(vllm_soft_steps(mode, precision, args, run_dir))
    ray.shutdown()
    trl = trl_steps(args)
    results["TRL GRPOTrainer"] = {"step_s": trl["median_step_s"], "rollout_s": trl["generate_s"],
                                  "learn_s": trl["median_step_s"] - trl["generate_s"],
                                  "step_seconds": trl["step_seconds"]}

    base = results["TRL GRPOTrainer"]["step_s"]
    print(f"\n{args.prompts} prompts x G={args.group_size}, {args.max_tokens} new tokens, {args.model} float32")
    print("| run | step s | generation s | learner s | push s | vs TRL |\n|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        r["ratio_to_trl"] = round(r["step_s"] / base, 3)
        print(f"| {name} | {r['step_s']:.1f} | {r['rollout_s']:.1f} | {r['learn_s']:.1f} | "
              f"{r.get('push_s', 0.0):.1f} | {r['ratio_to_trl']:.2f}x |")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"config": {k: str(v) for k, v in vars(args).items()}, "trl": trl, "results": results}
    (args.out / "grpo_step.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, args.out / "grpo_step.png")


if __name__ == "__main__":
    main()
