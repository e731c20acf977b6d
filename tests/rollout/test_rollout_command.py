"""`python -m rollout --config configs/rollout_smoke.yaml key=value ...`, run for real."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.sample import read_jsonl

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_rollout_command_writes_samples_and_summary(tmp_path, tiny_model_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "rollout", "--config", str(REPO / "configs" / "rollout_smoke.yaml"),
        f"output_dir={out}", "prompts.size=3", "sampling.group_size=2",
    ]
    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    samples = read_jsonl(out / "samples.jsonl")
    assert [(s.group_id, s.sample_index) for s in samples] == [(g, i) for g in range(3) for i in range(2)]
    assert all(s.soft_steps for s in samples)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 6 and summary["groups"] == 3
    # Accuracy is the share of fully correct answers (the config's answer check: `correct`).
    assert summary["accuracy"] == pytest.approx(sum(s.reward_parts["correct"] >= 1.0 for s in samples) / 6)
    assert summary["soft_step_fraction"] == pytest.approx(
        sum(len(s.soft_steps) for s in samples) / sum(len(s.response_token_ids) for s in samples))
    assert "prompts" in (out / "config.yaml").read_text()


def test_bad_config_key_is_named(tmp_path):
    command = [sys.executable, "-m", "rollout", "--config", str(REPO / "configs" / "rollout_smoke.yaml"),
               "sampling.temprature=0.5"]
    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0
    assert "sampling.temprature" in finished.stderr and "temperature" in finished.stderr
