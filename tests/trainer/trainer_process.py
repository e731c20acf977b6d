"""`trainer/run.py` as a child process, the way users start it, for the end-to-end tests."""

import subprocess
import sys
import time
from pathlib import Path

from trainer.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def start_trainer(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "trainer" / "run.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 900) -> None:
    """Wait for the run to end; a failure shows its stderr."""
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-4000:]


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 600) -> None:
    """Until the run has logged ``step``'s metrics (failing at once if the run died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").exists() and any(m["step"] >= step for m in read_metrics(run_dir)):
            return
        assert process.poll() is None, process.stderr.read()[-4000:]
        time.sleep(0.5)
    raise AssertionError(f"step {step} not logged within {timeout} s")
