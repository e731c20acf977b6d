"""`trainer/run.py` end to end on a real local Ray cluster: configs/smoke.yaml for three steps
in mode gate (HRPO: the run also trains, pushes, checkpoints and resumes the gate; replace
mode runs end to end in test_cluster.py); the same run killed (SIGKILL) after its step-2
checkpoint and resumed gives the same step-3 loss (float32, seeded); the newest checkpoint
served with soft thinking, its gated completions replayed by the learner."""

import json
import os
import signal
import sys
import time

import pytest
import torch
from openai_server import openai_server
from trainer_process import SMOKE, finish, start_trainer, wait_for_step

from trainer import checkpoints
from trainer.metrics import read_metrics
from trainer.policy import ReplayBatch, ReplayPolicy
from vllm_soft import soft_knobs, soft_summary, soft_trace
from vllm_soft.gate import fresh_gate, gate_state_dict, load_gate
from vllm_soft.params import SoftThinkingParams

pytestmark = pytest.mark.slow

SETTINGS = ["steps=3", "eval.num_prompts=4", "eval.every=2", "eval.max_tokens=8", "algorithm.mode=gate",
            "learner.gate_learning_rate=0.01", "learner.gate_lambda_learning_rate=0.1"]
GATED = {"mode": "gate", "emit": "sample", "top_k": 8, "max_soft_steps": 6}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_model_path):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    finish(start_trainer(["--config", SMOKE, f"output_dir={run_dir}", *SETTINGS], run_dir.parent))
    return run_dir


def test_smoke_run_trains_pushes_evaluates_and_checkpoints(smoke_run):
    metrics = read_metrics(smoke_run)
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    for evaluated in (metrics[0], metrics[2], metrics[3]):  # before training, every eval.every steps, the last
        for key in ("eval_accuracy", "eval_soft_accuracy"):  # pass@1 of one greedy answer per prompt
            assert evaluated[key] * 4 == pytest.approx(round(evaluated[key] * 4)) and 0 <= evaluated[key] <= 1
    assert "eval_accuracy" not in metrics[1]
    first = metrics[1]
    assert first["logprob_gap"] <= 1e-3, "at step 1 the learner holds the rollout weights"
    assert first["logprob_gap_soft"] <= 1e-3 and first["logprob_gap_token"] <= 1e-3  # each kind on its own
    assert first["grad_norm"] > 0 and first["reward_std"] > 0, "the smoke run must change the weights"
    assert all(m["push_checksum_match"] for m in metrics[1:]), "engines hold exactly the learner's weights"
    for key in ("reward_mean", "loss", "clip_fraction", "soft_step_fraction", "rollout_s", "learn_s", "push_s"):
        assert key in first
    assert first["soft_step_fraction"] > 0
    assert all(0.0 < m["hidden_share"] < 1.0 for m in metrics[1:])
    found = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(smoke_run))
    assert [p.name for p in found] == ["step_000002", "step_000003"], "checkpoint_every 1, the newest two kept"
    assert (found[-1] / "model" / "config.json").exists() and (found[-1] / "dcp").is_dir()
    assert json.loads((found[-1] / "trainer_state.json").read_text())["step"] == 3
    assert (smoke_run / "config.yaml").exists() and any((smoke_run / "tensorboard").iterdir())
    hidden = _hidden_size(found[-1] / "model")
    trained, _, fresh = load_gate(found[-1] / "model", hidden)
    assert not fresh, "the checkpoint carries its gate"
    for name, start in gate_state_dict(fresh_gate(hidden)).items():
        assert not torch.equal(gate_state_dict(trained)[name], start), f"gate {name} trained"


def _hidden_size(model_folder) -> int:
    return json.loads((model_folder / "config.json").read_text())["hidden_size"]


def test_killed_driver_resumes_from_its_last_checkpoint_with_the_same_loss(smoke_run, tmp_path):
    killed = tmp_path / "killed"
    process = start_trainer(["--config", SMOKE, f"output_dir={killed}", *SETTINGS], tmp_path)
    wait_for_step(killed, 2, process)
    while getattr(checkpoints.latest(killed), "name", None) != "step_000002":  # follows its metrics line closely
        assert process.poll() is None, process.stderr.read()[-4000:]
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoints.latest(killed).name == "step_000002"

    finish(start_trainer(["--resume", str(killed), "steps=3"], tmp_path))
    steps = read_metrics(killed)
    assert [m["step"] for m in steps] == [0, 1, 2, 3]
    assert "eval_accuracy" in steps[3], "the last step is evaluated"
    found = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(killed))
    assert [p.name for p in found] == ["step_000002", "step_000003"]
    expected = read_metrics(smoke_run)[3]
    assert abs(steps[3]["loss"] - expected["loss"]) <= 1e-6
    assert steps[3]["reward_mean"] == expected["reward_mean"]
    assert steps[3]["eval_accuracy"] == expected["eval_accuracy"]


def test_vllm_serve_serves_a_checkpoint_with_soft_thinking(smoke_run):
    """`vllm-soft serve CKPT/model --soft-thinking`: vLLM's serve command with the plugin (on CUDA
    builds `vllm serve` itself; the CPU build's `vllm` CLI cannot find its own version). A
    plain client's request thinks in soft tokens; a gated completion's log-probs (soft steps:
    their action; then plain tokens at temperature 1, where vLLM's raw log-probs are the
    sampled ones) equal the learner's replay of its trace with the checkpoint's weights and
    gate (read from the folder's soft_gate/, which vLLM must not take for weights)."""
    from transformers import AutoModelForCausalLM

    model_folder = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(smoke_run))[-1] / "model"
    command = [sys.executable, "-m", "vllm_soft.cli", "serve", str(model_folder), "--soft-thinking",
               "--enforce-eager", "--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", str(1 << 28)]
    prompt = [1, 5, 9, 200, 31, 7]
    with openai_server(command) as (client, model, _):
        response = client.completions.create(model=model, prompt="What is 2 + 3?", max_tokens=8, temperature=0.0)
        gated = client.completions.create(
            model=model, prompt=prompt, max_tokens=10, temperature=1.0, seed=3, logprobs=0,
            extra_body={"return_token_ids": True,
                        "vllm_xargs": {"soft_thinking": 1, **{f"soft_thinking_{k}": v for k, v in GATED.items()}}},
        ).choices[0]
    choice = response.choices[0]
    assert response.usage.completion_tokens > 0
    assert soft_summary(choice)["num_soft_steps"] > 0, "the served checkpoint thinks in soft tokens (soft by default)"

    trace = soft_trace(gated)
    assert len(trace) == GATED["max_soft_steps"] and all(0.0 < s["gate_retention"] < 1.0 for s in trace)
    served = [s["logprob"] for s in trace] + gated.logprobs.token_logprobs[len(trace):]
    hf_model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    gate, _, _ = load_gate(model_folder, _hidden_size(model_folder))
    batch = ReplayBatch([prompt], [list(gated.token_ids)], [list(trace)],
                        knobs=SoftThinkingParams().with_overrides(soft_knobs(gated)), temperature=1.0)
    with torch.no_grad():
        replayed, mask = ReplayPolicy(hf_model, gate=gate)(batch)
    assert int(mask.sum()) == len(served) == 10
    assert max(abs(a - b) for a, b in zip(replayed[0].tolist(), served)) <= 1e-3
