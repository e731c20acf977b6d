"""LoRA: merging matches peft's own and the saved adapter loads in peft (a real LoRA run,
which trains only the adapters, is the `ray job submit` test in test_cluster.py)."""

import torch

from trainer.lora import add_adapters, merge_adapters, save_adapter
from trainer.settings import LoraConfig

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


def test_targets_that_name_no_linear_layer_of_the_family_are_an_error_listing_its_layers():
    """Phi-3 fuses q/k/v into qkv_proj: the default targets (q_proj, k_proj, v_proj, o_proj)
    would adapt o_proj alone, silently."""
    import pytest
    from transformers import AutoModelForCausalLM

    from vllm_soft import models

    phi3 = AutoModelForCausalLM.from_pretrained(models.fetch("tiny-phi3"), dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\['q_proj', 'k_proj', 'v_proj'\] name no linear layer of Phi3ForCausalLM; "
                                         r"its linear layers are \['down_proj', 'gate_up_proj', 'lm_head', 'o_proj', "
                                         r"'qkv_proj'\]"):
        add_adapters(phi3, LoraConfig(rank=4, alpha=8.0))
    adapted = add_adapters(phi3, LoraConfig(rank=4, alpha=8.0, target_modules=["qkv_proj", "o_proj"]))
    assert sum("lora_A" in name for name, _ in adapted.named_parameters()) == 2 * phi3.config.num_hidden_layers
