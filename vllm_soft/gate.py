"""HRPO's learned gate (``mode: gate``): its settings, initialisation and files.

The gate belongs to the model: it lives in the model folder beside the weights, as

    MODEL/soft_gate/gate.safetensors   weight_r (H, H), bias_r (H,), weight_i (H, H), bias_i (H,), lambda (H,)
    MODEL/soft_gate/settings.json      GateSettings (how a fresh gate is drawn) and the hidden size

so every vLLM worker, the learner and a checkpoint read the same parameters. A subfolder,
because vLLM loads every ``*.safetensors`` file at the folder's top level as model weights
(and fails on the gate's names). A folder
without them gets a fresh gate drawn from ``GateSettings`` with its seed: every process
draws the same one, and the caller logs that it did. The math is ``soft_math.gated_inputs``.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vllm_soft.soft_math import GateTensors, gate_lambda_for

GATE_PREFIX = "soft_gate."
"""Name prefix of the gate's tensors in a weight push (beside the model's own names)."""
GATE_WEIGHTS_FILE = "soft_gate/gate.safetensors"
GATE_SETTINGS_FILE = "soft_gate/settings.json"
_TENSOR_NAMES = {"weight_r": "weight_r_HH", "bias_r": "bias_r_H", "weight_i": "weight_i_HH", "bias_i": "bias_i_H",
                 "lambda": "lambda_H"}


@dataclass(frozen=True)
class GateSettings:
    """How a fresh gate is drawn (HRPO's initialisation)."""

    retention_min: float = 0.99
    """r_min: at initialisation a = u^r with u ~ U(r_min, r_max) per dimension, so inputs
    start as (almost) the token embedding and the latent share grows with training."""
    retention_max: float = 0.999
    """r_max (see retention_min)."""
    init_std: float = 0.02
    """Standard deviation of W_r and W_i at initialisation (biases start at 0)."""
    seed: int = 0
    """Seed of the fresh gate: every process that draws one draws the same."""

    def __post_init__(self):
        if not 0.0 < self.retention_min <= self.retention_max < 1.0:
            raise ValueError(f"gate retention_min and retention_max must satisfy 0 < retention_min <= retention_max < 1 "
                             f"(got {self.retention_min} and {self.retention_max})")
        if not self.init_std >= 0.0:
            raise ValueError(f"gate init_std must be >= 0 (got {self.init_std})")


def fresh_gate(hidden_size: int, settings: GateSettings = GateSettings()) -> GateTensors:
    """A gate drawn as HRPO draws it, float32, on the CPU, from ``settings.seed``."""
    generator = torch.Generator().manual_seed(settings.seed)
    low, high = settings.retention_min, settings.retention_max
    retention_H = low + (high - low) * torch.rand(hidden_size, generator=generator, dtype=torch.float64)
    return GateTensors(
        weight_r_HH=settings.init_std * torch.randn(hidden_size, hidden_size, generator=generator),
        bias_r_H=torch.zeros(hidden_size),
        weight_i_HH=settings.init_std * torch.randn(hidden_size, hidden_size, generator=generator),
        bias_i_H=torch.zeros(hidden_size),
        lambda_H=gate_lambda_for(retention_H).float(),
    )


def gate_state_dict(gate: GateTensors) -> dict[str, torch.Tensor]:
    """The gate's tensors by their file names."""
    return {name: getattr(gate, field) for name, field in _TENSOR_NAMES.items()}


def gate_to(gate: GateTensors, device, dtype: torch.dtype = torch.float32) -> GateTensors:
    """The gate's tensors on ``device`` in ``dtype`` (detached)."""
    return GateTensors(**{f.name: getattr(gate, f.name).detach().to(device, dtype) for f in dataclasses.fields(gate)})


def gate_from_state_dict(tensors: dict[str, torch.Tensor], hidden_size: int) -> GateTensors:
    """The gate from ``gate_state_dict``'s names; a missing tensor or a wrong shape is an error."""
    missing = sorted(set(_TENSOR_NAMES) - set(tensors))
    if missing:
        raise ValueError(f"soft gate: tensors {missing} missing (has {sorted(tensors)})")
    gate = GateTensors(**{field: tensors[name] for name, field in _TENSOR_NAMES.items()})
    for name, field in _TENSOR_NAMES.items():
        expected = (hidden_size, hidden_size) if field.endswith("_HH") else (hidden_size,)
        if tuple(tensors[name].shape) != expected:
            raise ValueError(f"soft gate: {name} has shape {tuple(tensors[name].shape)}, the model needs {expected}")
    return gate


def save_gate(folder: str | Path, gate: GateTensors, settings: GateSettings = GateSettings()) -> None:
    """Write the gate into a model folder (beside ``config.json``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {name: tensor.detach().float().contiguous().cpu() for name, tensor in gate_state_dict(gate).items()}
    (folder / GATE_WEIGHTS_FILE).parent.mkdir(exist_ok=True)
    save_file(tensors, folder / GATE_WEIGHTS_FILE)
    hidden_size = gate.lambda_H.shape[0]
    (folder / GATE_SETTINGS_FILE).write_text(
        json.dumps({"hidden_size": hidden_size, **dataclasses.asdict(settings)}, indent=1) + "\n"
    )


def load_gate(folder: str | Path, hidden_size: int) -> tuple[GateTensors, GateSettings, bool]:
    """(gate, settings, fresh): the folder's gate, or a fresh one (``fresh`` True) drawn from
    the folder's settings file if it has one, else from the default settings."""
    folder = Path(folder)
    settings_path = folder / GATE_SETTINGS_FILE
    settings = GateSettings()
    if settings_path.exists():
        stored = json.loads(settings_path.read_text())
        if stored.get("hidden_size", hidden_size) != hidden_size:
            raise ValueError(f"{settings_path}: hidden_size {stored['hidden_size']}, the model's is {hidden_size}")
        settings = GateSettings(**{f.name: stored[f.name] for f in dataclasses.fields(GateSettings) if f.name in stored})
    weights_path = folder / GATE_WEIGHTS_FILE
    if not weights_path.exists():
        return fresh_gate(hidden_size, settings), settings, True
    from safetensors.torch import load_file

    return gate_from_state_dict(load_file(weights_path), hidden_size), settings, False
