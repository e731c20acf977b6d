"""Training curves from metrics.jsonl.

    python -m trainer.report RUN_DIR [RUN_DIR ...] [--compare OUT.png]

Each run gets RUN_DIR/curves.png; ``--compare`` also draws every run's held-out greedy
accuracy (plain, and soft where measured) against wall-clock minutes into one plot.
"""

import argparse
from pathlib import Path

from trainer.metrics import read_metrics

EVAL_CURVES = {"eval_accuracy": "plain greedy", "eval_soft_accuracy": "soft greedy"}
PANELS = [
    ("reward_mean", "reward"), ("accuracy", "accuracy (train samples)"), (EVAL_CURVES, "greedy accuracy (held out)"),
    ("response_length", "response tokens"), ("soft_step_fraction", "soft-step fraction"), ("logprob_gap", "learner-rollout log-prob gap"),
    ("clip_fraction", "clip fraction"), ("kl", "KL to reference"), ("grad_norm", "grad norm"),
]


def draw(run_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    fig, axes = plt.subplots(3, 3, figsize=(12, 9))
    for ax, (keys, title) in zip(axes.flat, PANELS):
        curves = keys if isinstance(keys, dict) else {keys: None}
        for key, label in curves.items():
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        if len(ax.lines) > 1:
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=110)
    return path


def compare(run_dirs: list[Path], path: Path) -> Path:
    """Held-out greedy accuracy of several runs against minutes since each started."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run_dir in run_dirs:
        for key, style in zip(EVAL_CURVES, ("-", "--")):
            points = [(r["elapsed_s"] / 60, r[key]) for r in read_metrics(run_dir)
                      if r.get(key) is not None and "elapsed_s" in r]
            if points:
                ax.plot(*zip(*points), style, marker="o", label=f"{run_dir.name} ({EVAL_CURVES[key]})")
    ax.set_xlabel("minutes since start")
    ax.set_ylabel("greedy accuracy (held out)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--compare", type=Path, default=None, help="also plot held-out accuracy of all runs here")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        print(draw(run_dir))
    if args.compare is not None:
        print(compare(args.run_dirs, args.compare))


if __name__ == "__main__":
    main()
