"""Does working it out pay? The untrained model on basic_arithmetic at growing difficulty,
asked to think first (the training prompt: <think> then <answer>), asked for the number alone
(the neutral prompt), and made to answer at once (the direct format: the same with its turn
begun by "The final number is", DIRECT_BUDGET tokens), decoded greedily and, in the first two, in SCM (add) mode.

    .venv/bin/python benchmarks/reasoning_pays.py [--tasks 1d2t 2d2t 1d3t 2d3t] [--num-problems 300]

Why: on 1-digit 2-term arithmetic (issue 16's task) token GRPO learned to skip its
reasoning and lost nothing by it; a soft action can only beat token GRPO where reasoning
improves the answer. This measures, per task, the paired accuracy of thinking over
answering at once (greedy, training prompt minus direct format), of the training prompt
over the neutral one, and of SCM over greedy, on the same held-out problems (seed 12345),
with standard errors and each cell's answer shape (length, share of direct answers). A task
where thinking beats answering is one where RL can reward thinking, soft or not. Outputs
in ``--out``: reasoning_pays.md, .json, .png, and per format the harness's cells and samples.
"""

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.soft_rl_arms import (ARMS, EVAL_SEED, NEUTRAL_INSTRUCTION, REPO, TASKS, answer_shape, eval_modes,
                                     eval_records, paired, pct)

MODES = ["greedy", "scm"]
FORMATS = ["train", "neutral", "direct"]
DIRECT_PREFIX = "The final number is"
"""The direct format: the neutral prompt, with the model's turn begun by this prefix and
DIRECT_BUDGET tokens to finish it, greedily. Asked for the number alone (the neutral
format) the untrained model still works it out at length (89-100% of its answers exceed 16
tokens); three examples of bare answers in the instruction did not change that (its first
8 tokens were "To calculate ...": 4.0% on 1d2t), and as a plain completion ending in
"Answer:" it said " 10" or nothing (2.7%). Only starting its turn makes it answer at once."""
DIRECT_BUDGET = 8
"""Tokens for a direct answer: " -9801" is 5 in the SmolLM2 tokenizer (a digit per token);
so short a budget leaves no room for a worked sum after the number to override it."""

log = logging.getLogger("reasoning_pays")


def evaluate_tasks(tasks: list[str], num_problems: int, max_tokens: int, out: Path) -> None:
    """The untrained model's cells for every task and mode, one engine per prompt format,
    into ``out/FORMAT`` (resumable)."""
    from rollout.config import load_config
    from rollout.eval.benchmarks import resolve_benchmark
    from rollout.eval.run import EvalPlan, evaluate
    from rollout.prompts import PromptFormat
    from rollout.settings import PoolConfig
    from trainer.settings import TrainConfig

    train = load_config(TrainConfig, REPO / ARMS["grpo"], [])
    benches = [dataclasses.replace(resolve_benchmark("basic_arithmetic", TASKS[t], seed=EVAL_SEED, size=num_problems),
                                   name=t) for t in tasks]
    formats = {"train": train.format, "neutral": PromptFormat(instruction=NEUTRAL_INSTRUCTION),
               "direct": PromptFormat(instruction=NEUTRAL_INSTRUCTION, response_prefix=DIRECT_PREFIX)}
    for name in FORMATS:
        direct = name == "direct"
        plan = EvalPlan(models=["base=smollm2-135m"], benchmarks=benches, modes=eval_modes(["greedy"] if direct else MODES),
                        n=1, num_problems=num_problems, max_tokens=DIRECT_BUDGET if direct else max_tokens, seed=0,
                        engine=train.engine, pool=PoolConfig(num_workers=1, num_cpus_per_worker=2),
                        format=formats[name])
        evaluate(plan, out / name, resume=True)


def summarize(records: dict[tuple[str, str, str], list[dict]], tasks: list[str]) -> dict:
    """Per cell: accuracy and answer shape; per task: thinking over answering directly
    (greedy), SCM over greedy in each prompt, and SCM thinking over greedy answering."""
    def correct(key):
        return [r["correct"] for r in records[key]]

    cells = [{"format": f, "task": t, "mode": m, "accuracy": sum(correct((f, t, m))) / len(records[f, t, m]),
              **answer_shape(records[f, t, m])}
             for t in tasks for f in FORMATS for m in MODES if (f, t, m) in records]
    contrasts = []
    wanted = {"think minus direct answer, greedy": (("train", "greedy"), ("direct", "greedy")),
              "training prompt minus neutral prompt, greedy": (("train", "greedy"), ("neutral", "greedy")),
              "SCM minus greedy, training prompt": (("train", "scm"), ("train", "greedy")),
              "SCM minus greedy, neutral prompt": (("neutral", "scm"), ("neutral", "greedy")),
              "SCM thinking minus direct answer": (("train", "scm"), ("direct", "greedy"))}
    for t in tasks:
        for name, ((fa, ma), (fb, mb)) in wanted.items():
            if (fa, t, ma) in records and (fb, t, mb) in records:
                diff, se = paired(correct((fa, t, ma)), correct((fb, t, mb)))
                contrasts.append({"task": t, "contrast": name, "difference": diff, "se": se})
    return {"cells": cells, "contrasts": contrasts}


def markdown(summary: dict) -> str:
    lines = ["| task | prompt | decoding | accuracy % | mean tokens | direct answers % | accuracy direct / longer |",
             "|---|---|---|---:|---:|---:|---:|"]
    for c in summary["cells"]:
        lines.append(f"| {c['task']} | {c['format']} | {c['mode']} | {100 * c['accuracy']:.1f} | "
                     f"{c['mean_length']:.0f} | {100 * c['direct_share']:.0f} | "
                     f"{pct(c['direct_accuracy'])} / {pct(c['longer_accuracy'])} |")
    lines += ["", "| task | paired difference | points |", "|---|---|---:|"]
    for c in summary["contrasts"]:
        lines.append(f"| {c['task']} | {c['contrast']} | {100 * c['difference']:+.1f} ± {100 * c['se']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(c["task"] for c in summary["cells"]))
    series = list(dict.fromkeys((c["format"], c["mode"]) for c in summary["cells"]))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (f, m) in enumerate(series):
        acc = {c["task"]: c["accuracy"] for c in summary["cells"] if (c["format"], c["mode"]) == (f, m)}
        xs = [j + (i - (len(series) - 1) / 2) * width for j, t in enumerate(tasks) if t in acc]
        ax.bar(xs, [100 * acc[t] for t in tasks if t in acc], width, label=f"{f} format, {m}")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_xlabel("basic_arithmetic: digits (d) and terms (t)")
    ax.set_ylabel("held-out accuracy, untrained model (%)")
    ax.set_title("Thinking (train) vs the number alone (neutral) vs at once (direct)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--num-problems", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=128,
                        help="answer budget (issue 16 trained and evaluated at 96; harder sums need more)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reasoning_pays")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    evaluate_tasks(args.tasks, args.num_problems, args.max_tokens, args.out)
    summary = summarize(eval_records(args.out, FORMATS, "samples.jsonl", "bench"), args.tasks)
    (args.out / "reasoning_pays.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = markdown(summary)
    (args.out / "reasoning_pays.md").write_text(table)
    plot(summary, args.out / "reasoning_pays.png")
    print(table)


if __name__ == "__main__":
    main()
