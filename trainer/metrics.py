"""Per-step metrics to ``metrics.jsonl`` (one JSON object per step) and TensorBoard."""

import json
from pathlib import Path


class MetricsLog:
    """Appends to RUN_DIR/metrics.jsonl and RUN_DIR/tensorboard/; a resumed run keeps appending."""

    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, metrics: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The logged steps; a step logged twice (a run resumed before its checkpoint) keeps the last."""
    by_step = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
