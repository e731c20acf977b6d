"""`trainer/run.py` end to end on a real local Ray cluster: configs/smoke.yaml, then --resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import openai_server

from trainer import checkpoints
from vllm_soft import soft_summary
from trainer.metrics import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    finished = subprocess.run([sys.executable, str(REPO / "trainer" / "run.py"), *args], cwd=cwd,
                              capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-4000:]
    return finished


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_model_path):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    run(["--config", str(REPO / "configs" / "smoke.yaml"), f"output_dir={run_dir}",
         "eval.num_prompts=4", "eval.every=2", "eval.max_tokens=8"], cwd=run_dir.parent)
    return run_dir


def test_smoke_run_trains_pushes_and_checkpoints(smoke_run):
    metrics = read_metrics(smoke_run)
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for evaluated in (metrics[0], metrics[2]):  # before training, and every eval.every steps
        for key in ("eval_accuracy", "eval_soft_accuracy"):  # pass@1 of one greedy answer per prompt
            assert evaluated[key] * 4 == pytest.approx(round(evaluated[key] * 4)) and 0 <= evaluated[key] <= 1
    assert "eval_accuracy" not in metrics[1]
    first = metrics[1]
    assert first["logprob_gap"] <= 1e-3, "at step 1 the learner holds the rollout weights"
    assert first["grad_norm"] > 0 and first["reward_std"] > 0, "the smoke run must change the weights"
    assert all(m["push_checksum_match"] for m in metrics[1:]), "engines hold exactly the learner's weights"
    for key in ("reward_mean", "loss", "clip_fraction", "soft_step_fraction", "rollout_s", "learn_s", "push_s"):
        assert key in first
    assert first["soft_step_fraction"] > 0
    found = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(smoke_run))
    assert [p.name for p in found] == ["step_000001", "step_000002"]
    assert (found[-1] / "model" / "config.json").exists() and (found[-1] / "dcp").is_dir()
    assert (smoke_run / "config.yaml").exists() and any((smoke_run / "tensorboard").iterdir())


def test_resume_runs_step_3_and_keeps_two_checkpoints(smoke_run):
    run(["--resume", str(smoke_run), "steps=3"], cwd=smoke_run.parent)
    metrics = read_metrics(smoke_run)
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert "eval_accuracy" in metrics[3], "the last step is evaluated"
    found = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(smoke_run))
    assert [p.name for p in found] == ["step_000002", "step_000003"]
    assert json.loads((found[-1] / "trainer_state.json").read_text())["step"] == 3


def test_vllm_serve_serves_a_checkpoint_with_soft_thinking(smoke_run):
    """`vllm-soft serve CKPT/model --soft-thinking`: vLLM's serve command with the plugin (on CUDA
    builds `vllm serve` itself; the CPU build's `vllm` CLI cannot find its own version)."""
    newest = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(smoke_run))[-1]
    command = [sys.executable, "-m", "vllm_soft.cli", "serve", str(newest / "model"), "--soft-thinking",
               "--enforce-eager", "--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", str(1 << 28)]
    with openai_server(command) as (client, model, _):
        response = client.completions.create(model=model, prompt="What is 2 + 3?", max_tokens=8, temperature=0.0,
                                             extra_body={"vllm_xargs": {"soft_thinking": 1}})
    choice = response.choices[0]
    assert response.usage.completion_tokens > 0
    assert soft_summary(choice)["num_soft_steps"] > 0, "the served checkpoint thinks in soft tokens"
