"""The smoke run on real Ray clusters: `ray job submit` to a `ray start --head` (a LoRA run:
it trains only the adapters and pushes merged weights), and two nodes (simulated on this
machine) with learners and rollouts placed by custom resources, one rollout worker killed
mid-run."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_process import SMOKE, finish, start_trainer, wait_for_step

from rollout.pool import ACTOR_NAME_PREFIX
from trainer import checkpoints
from trainer.metrics import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray(*args, cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_runs_a_lora_smoke_job_that_trains_only_adapters(tmp_path, tiny_model_path):
    # The job's `python` is the head's: put this virtualenv first on the head's PATH. Run
    # from an empty folder (a `ray` folder in the working directory would shadow the package).
    # Loopback only: no token authentication (Ray 2.60 turns it on once ~/.ray/auth_token exists).
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = _free_port(), _free_port()
    # --block: the head lives as long as this process; stopping it stops only this cluster.
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4", "--disable-usage-stats"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    address = f"--address=http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while _ray("job", "list", address, cwd=tmp_path, env=env, timeout=60).returncode != 0:
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(2)
        run_dir = tmp_path / "run"
        submitted = _ray(
            "job", "submit", address, "--submission-id=smoke", "--",
            "python", str(REPO / "trainer" / "run.py"), "--config", SMOKE, f"output_dir={run_dir}", "steps=1",
            "learner.learning_rate=0.01", "learner.lora.rank=4", "learner.lora.alpha=8",
            "learner.lora.target_modules=[q_proj,v_proj]",
            cwd=tmp_path, env=env,
        )
        status = _ray("job", "status", address, "smoke", cwd=tmp_path, env=env)
        report = (status.stdout + status.stderr).lower()
        assert "succeeded" in report and "failed" not in report, submitted.stdout[-4000:] + submitted.stderr[-2000:]
    finally:
        head.terminate()
        head.wait(timeout=120)
    (metrics,) = read_metrics(run_dir)
    assert metrics["step"] == 1 and metrics["logprob_gap"] <= 1e-3 and metrics["grad_norm"] > 0
    assert metrics["push_checksum_match"], "engines hold the learner's merged weights"
    (checkpoint,) = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(run_dir))
    assert (checkpoint / "adapter" / "adapter_config.json").exists()
    trained = load_file(str(checkpoint / "model" / "model.safetensors"))
    base = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    moved = {name for name in base if not torch.equal(trained[name], base[name])}
    assert moved, "one step at lr 0.01 must move the adapted layers"
    assert all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in moved), sorted(moved)[:5]


def test_two_node_cluster_places_by_resources_and_survives_a_killed_rollout_worker(tmp_path, tiny_model_path):
    """Learners on the head (resource learner_node), two rollout workers on the other node
    (rollout_node); one worker killed after step 1: the pool replaces it and training goes on."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"learner_node": 2}})
    cluster.add_node(num_cpus=2, resources={"rollout_node": 2})
    try:
        run_dir = tmp_path / "run"
        process = start_trainer(
            ["--config", SMOKE, f"output_dir={run_dir}", "steps=3", "pool.num_workers=2",
             "learner.resources_per_rank={learner_node: 1}", "pool.resources_per_worker={rollout_node: 1}"],
            tmp_path, {**os.environ, "RAY_ADDRESS": cluster.address},
        )
        wait_for_step(run_dir, 1, process)
        ray.init(address=cluster.address)
        victims = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(ACTOR_NAME_PREFIX)]
        assert len(victims) == 2
        ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]))
        ray.shutdown()
        finish(process)
        assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]
    finally:
        cluster.shutdown()
