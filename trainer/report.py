"""``python -m trainer.report RUN_DIR``: training curves from metrics.jsonl to RUN_DIR/curves.png."""

import argparse
from pathlib import Path

from trainer.metrics import read_metrics

PANELS = [
    ("reward_mean", "reward"), ("accuracy", "accuracy (train samples)"), ("eval_accuracy", "greedy accuracy (held out)"),
    ("response_length", "response tokens"), ("soft_step_fraction", "soft-step fraction"), ("logprob_gap", "learner-rollout log-prob gap"),
    ("clip_fraction", "clip fraction"), ("kl", "KL to reference"), ("grad_norm", "grad norm"),
]


def draw(run_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    fig, axes = plt.subplots(3, 3, figsize=(12, 9))
    for ax, (key, title) in zip(axes.flat, PANELS):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    print(draw(parser.parse_args(argv).run_dir))


if __name__ == "__main__":
    main()
