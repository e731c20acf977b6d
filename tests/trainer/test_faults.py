"""Faults during training, on a real Ray cluster: a rollout worker killed mid-run, the
driver killed and resumed (float32, seeded: the first resumed step's loss equals the
uninterrupted run's)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollout.pool import ACTOR_NAME_PREFIX
from trainer import checkpoints
from trainer.metrics import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def trainer(args: list[str], cwd: Path, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "trainer" / "run.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(m["step"] >= step for m in read_metrics(run_dir)):
            return
        assert process.poll() is None, process.stderr.read()[-4000:]
        time.sleep(0.5)
    raise AssertionError(f"step {step} not logged within {timeout} s")


def test_training_goes_on_when_a_rollout_worker_is_killed(tmp_path, tiny_model_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    try:
        run_dir = tmp_path / "run"
        process = trainer(["--config", SMOKE, f"output_dir={run_dir}", "steps=4", "pool.num_workers=2"], tmp_path,
                          {**os.environ, "RAY_ADDRESS": cluster.address})
        wait_for_step(run_dir, 1, process)
        ray.init(address=cluster.address)
        victims = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(ACTOR_NAME_PREFIX)]
        assert victims
        ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]))
        ray.shutdown()
        assert process.wait(timeout=900) == 0, process.stderr.read()[-4000:]
        assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4]
    finally:
        cluster.shutdown()


def test_killed_driver_resumes_from_the_last_checkpoint_with_the_same_loss(tmp_path, tiny_model_path):
    overrides = ["steps=3", "checkpoint_every=2", "seed=3"]
    straight = tmp_path / "straight"
    reference = trainer(["--config", SMOKE, f"output_dir={straight}", *overrides], tmp_path)
    assert reference.wait(timeout=900) == 0, reference.stderr.read()[-4000:]

    killed = tmp_path / "killed"
    process = trainer(["--config", SMOKE, f"output_dir={killed}", *overrides], tmp_path)
    wait_for_step(killed, 2, process)
    while checkpoints.latest(killed) is None:  # the step-2 checkpoint follows its metrics line closely
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoints.latest(killed).name == "step_000002"

    resumed = trainer(["--resume", str(killed)], tmp_path)
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()[-4000:]
    steps = read_metrics(killed)
    assert [m["step"] for m in steps] == [1, 2, 3]
    expected = read_metrics(straight)[2]
    assert abs(steps[2]["loss"] - expected["loss"]) <= 1e-6
    assert steps[2]["reward_mean"] == expected["reward_mean"]
