"""The smoke run as users start it on a multi-node cluster: `ray job submit` to a two-node
Ray cluster made with `ray start` (both nodes on this machine), learners placed on the head
and rollout workers on the other node by custom resources, a LoRA run (it trains only the
adapters and pushes merged weights), one rollout worker killed mid-run."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_process import SMOKE

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


def _node(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    """A `ray start --block` node: it lives as long as the process (stopping it stops only this cluster)."""
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _own_ports() -> list[str]:
    """Free ports for a node's processes: the defaults may be taken (another cluster on this
    machine, or the other node here: both have one address)."""
    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port")
    return [f"--{name}={_free_port()}" for name in names]


def _job_status(address: str, cwd: Path, env: dict) -> str:
    status = _ray("job", "status", address, "smoke", cwd=cwd, env=env, timeout=60)
    return (status.stdout + status.stderr).lower()


def test_ray_job_submit_to_a_two_node_cluster_trains_lora_and_survives_a_killed_rollout_worker(
    tmp_path, tiny_model_path, monkeypatch
):
    # The job's `python` is the head's: put this virtualenv first on the nodes' PATH. Run
    # from an empty folder (a `ray` folder in the working directory would shadow the package).
    # Loopback only: no token authentication (Ray 2.60 turns it on once ~/.ray/auth_token exists).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    port, dashboard = _free_port(), _free_port()
    nodes = [_node(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", "--num-cpus=2", f"--resources={json.dumps({'learner_node': 2})}",
                    *_own_ports()],
                   tmp_path, env)]
    address = f"--address=http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while _ray("job", "list", address, cwd=tmp_path, env=env, timeout=60).returncode != 0:
            assert nodes[0].poll() is None and time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(2)
        run_dir = tmp_path / "run"
        job = [
            "job", "submit", address, "--submission-id=smoke", "--no-wait", "--",
            "python", str(REPO / "trainer" / "run.py"), "--config", SMOKE, f"output_dir={run_dir}", "steps=3",
            "pool.num_workers=2", "learner.resources_per_rank={learner_node: 1}",
            "pool.resources_per_worker={rollout_node: 1}",
            "learner.learning_rate=0.01", "learner.lora.rank=4", "learner.lora.alpha=8",
            "learner.lora.target_modules=[q_proj,v_proj]",
        ]
        submitted = _ray(*job, cwd=tmp_path, env=env)
        while "no available agent" in submitted.stderr.lower() and time.monotonic() < deadline:  # still starting
            time.sleep(2)
            submitted = _ray(*job, cwd=tmp_path, env=env)
        assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
        # The second node joins after the submission; the rollout workers wait for it.
        nodes.append(_node([f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                            f"--resources={json.dumps({'rollout_node': 2})}", *_own_ports()], tmp_path, env))
        import ray

        ray.init(address=f"127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert nodes[1].poll() is None and time.monotonic() < deadline, nodes[1].stderr.read()[-2000:]
            time.sleep(1)
        deadline = time.monotonic() + 600
        while not ((run_dir / "metrics.jsonl").exists() and read_metrics(run_dir)):
            assert "failed" not in _job_status(address, tmp_path, env) and time.monotonic() < deadline
            time.sleep(1)
        victims = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(ACTOR_NAME_PREFIX)]
        assert len(victims) == 2
        ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]))
        while True:
            report = _job_status(address, tmp_path, env)
            if any(word in report for word in ("succeeded", "failed", "stopped")):
                break
            assert time.monotonic() < deadline, report
            time.sleep(2)
        logs = _ray("job", "logs", address, "smoke", cwd=tmp_path, env=env).stdout
        assert "succeeded" in report and "failed" not in report, logs[-4000:]
    finally:
        import ray

        ray.shutdown()
        for node in reversed(nodes):
            node.terminate()
            node.wait(timeout=120)
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3], "training went on after the kill"
    assert metrics[0]["logprob_gap"] <= 1e-3 and metrics[0]["grad_norm"] > 0
    assert all(m["push_checksum_match"] for m in metrics), "engines hold the learner's merged weights"
    checkpoint = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(run_dir))[-1]
    assert (checkpoint / "adapter" / "adapter_config.json").exists()
    trained = load_file(str(checkpoint / "model" / "model.safetensors"))
    base = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    moved = {name for name in base if not torch.equal(trained[name], base[name])}
    assert moved, "lr 0.01 must move the adapted layers"
    assert all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in moved), sorted(moved)[:5]
