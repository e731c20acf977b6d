"""LoRA: merging matches peft's own, the saved adapter loads in peft, and a real run trains only adapters."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer import checkpoints
from trainer.lora import add_adapters, merge_adapters, save_adapter
from trainer.metrics import read_metrics
from trainer.settings import LoraConfig

REPO = Path(__file__).resolve().parents[2]
LORA = LoraConfig(rank=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"])


def _model_with_trained_adapters(path):
    from transformers import AutoModelForCausalLM

    model = add_adapters(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), LORA)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # fresh adapters have B = 0, which would merge to nothing
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def test_merge_equals_peft_merge_and_unload(tiny_model_path):
    model = _model_with_trained_adapters(tiny_model_path)
    merged = merge_adapters(dict(model.state_dict()), LORA.alpha / LORA.rank)
    expected = model.merge_and_unload().state_dict()
    assert merged.keys() == expected.keys()
    changed = 0
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, atol=1e-6, rtol=1e-6, msg=name)
        changed += any(m in name for m in LORA.target_modules)
    assert changed > 0


def test_saved_adapter_loads_in_peft(tiny_model_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = _model_with_trained_adapters(tiny_model_path)
    state = dict(model.state_dict())
    save_adapter(state, LORA, str(tiny_model_path), tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload().state_dict()
    merged = merge_adapters(state, LORA.alpha / LORA.rank)
    for name, tensor in merged.items():
        torch.testing.assert_close(loaded[name], tensor, atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.slow
def test_lora_run_trains_only_adapters_and_pushes_merged_weights(tmp_path, tiny_model_path):
    run_dir = tmp_path / "run"
    overrides = [f"output_dir={run_dir}", "steps=1", "learner.learning_rate=0.01", "learner.lora.rank=4",
                 "learner.lora.alpha=8", "learner.lora.target_modules=[q_proj,v_proj]"]
    finished = subprocess.run([sys.executable, str(REPO / "trainer" / "run.py"), "--config",
                               str(REPO / "configs" / "smoke.yaml"), *overrides],
                              cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-4000:]
    (metrics,) = read_metrics(run_dir)
    assert metrics["logprob_gap"] <= 1e-3 and metrics["grad_norm"] > 0
    assert metrics["push_checksum_match"], "engines hold the learner's merged weights"

    (checkpoint,) = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(run_dir))
    assert (checkpoint / "adapter" / "adapter_config.json").exists()
    trained = load_file(str(checkpoint / "model" / "model.safetensors"))
    base = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    moved = {name for name in base if not torch.equal(trained[name], base[name])}
    assert moved, "one step at lr 0.01 must move the adapted layers"
    assert all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in moved), sorted(moved)[:5]
