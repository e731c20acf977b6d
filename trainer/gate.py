"""The learner's HRPO gate (``algorithm.mode: gate``): ``vllm_soft.gate``'s tensors as a module.

``SoftGate`` is a submodule of the policy (``ReplayPolicy.soft_gate``), so its parameters
are named ``soft_gate.weight_r`` ... ``soft_gate.lambda``: the names a weight push carries
(``vllm_soft.gate.GATE_PREFIX`` plus the file names), which the engine's worker routes to
its gate. It is its own FSDP unit, kept and computed in float32 whatever the model's dtype
(the engine computes the gate in float32 too), so every use of the parameters goes
through ``forward``: FSDP gathers a unit's parameters only while its forward runs.
"""

import torch
from torch import nn

from vllm_soft.gate import GATE_PREFIX, gate_from_state_dict, gate_state_dict
from vllm_soft.soft_math import GateTensors, gated_inputs

LAMBDA = "lambda"
"""The retention parameter Λ's name (HRPO trains it at a higher learning rate)."""


class SoftGate(nn.Module):
    """HRPO's gate, trainable: r = σ(W_r ê + b_r), i = σ(W_i ê + b_i), a = exp(-c softplus(-Λ) r)."""

    def __init__(self, gate: GateTensors):
        super().__init__()
        for name, tensor in gate_state_dict(gate).items():
            self.register_parameter(name, nn.Parameter(tensor.detach().float().clone()))

    def tensors(self) -> GateTensors:
        """The parameters as ``GateTensors`` (valid inside ``forward`` under FSDP)."""
        parameters = dict(self.named_parameters())
        return gate_from_state_dict(parameters, parameters[LAMBDA].shape[0])

    def forward(self, token_embeds_SH: torch.Tensor, latent_SH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gated inputs, a), float32: ``soft_math.gated_inputs``, the engine's function."""
        return gated_inputs(token_embeds_SH, latent_SH, self.tensors())


def is_gate_parameter(name: str) -> bool:
    """Whether a policy parameter name (any wrapper prefix) is the gate's."""
    return name.startswith(GATE_PREFIX) or f".{GATE_PREFIX}" in name


def is_gate_lambda(name: str) -> bool:
    return is_gate_parameter(name) and name.endswith(f"{GATE_PREFIX}{LAMBDA}")
