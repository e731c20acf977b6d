"""LoRA through peft: adapters on the learner's policy, merged into plain weights for the engines.

Only adapter weights train. The engines never see an adapter: every push (and every
checkpoint's ``model/`` folder) carries ``W + (alpha / rank) * B @ A``; the adapter alone is
saved beside it in peft's format (``adapter/``).
"""

from pathlib import Path

import torch
from torch import nn

from trainer.settings import LoraConfig

PEFT_PREFIX = "base_model.model."
ADAPTER_NAME = "default"


def add_adapters(model: nn.Module, config: LoraConfig) -> nn.Module:
    """``model`` wrapped by peft with fresh LoRA adapters (B = 0: the same function as before)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})
    missing = [target for target in config.target_modules if target not in linear]
    if missing:  # peft adapts the names it finds and ignores the rest: a Phi-3 run would train o_proj alone
        raise ValueError(f"lora.target_modules {missing} name no linear layer of {type(model).__name__}; "
                         f"its linear layers are {linear}")
    peft_config = PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.target_modules),
                                 lora_dropout=0.0, bias="none")
    return get_peft_model(model, peft_config)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Hugging Face causal LM, with or without a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers


def merge_adapters(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A peft state dict (names under ``base_model.model.``) as plain Hugging Face weights,
    each adapted linear merged: ``W + scaling * B @ A`` (computed in float32)."""
    merged = {}
    for name, tensor in state.items():
        local = name.removeprefix(PEFT_PREFIX)
        if ".lora_A." in local or ".lora_B." in local:
            continue
        module, found, leaf = local.partition(".base_layer.")
        if found:
            if leaf == "weight":
                lora_a = state[f"{PEFT_PREFIX}{module}.lora_A.{ADAPTER_NAME}.weight"].float()
                lora_b = state[f"{PEFT_PREFIX}{module}.lora_B.{ADAPTER_NAME}.weight"].float()
                tensor = (tensor.float() + scaling * (lora_b @ lora_a)).to(tensor.dtype)
            local = f"{module}.{leaf}"
        merged[local] = tensor
    return merged


def save_adapter(state: dict[str, torch.Tensor], config: LoraConfig, base_model: str, folder: str | Path) -> None:
    """The adapter alone, as ``PeftModel.from_pretrained(base, folder)`` reads it."""
    from peft import LoraConfig as PeftLoraConfig
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adapter = {name.replace(f".{ADAPTER_NAME}.", "."): tensor.contiguous()
               for name, tensor in state.items() if ".lora_A." in name or ".lora_B." in name}
    save_file(adapter, str(folder / "adapter_model.safetensors"))
    PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.target_modules),
                   lora_dropout=0.0, bias="none", base_model_name_or_path=base_model).save_pretrained(str(folder))
