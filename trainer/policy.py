"""The learner's policy: a Hugging Face causal LM that replays rollouts, soft steps included.

``ReplayPolicy.forward(batch)`` rebuilds each sequence's input embeddings from its trace
(``vllm_soft.replay``), runs one padded forward pass over the batch, applies the output
layer at response positions only, and returns the log-probability of every response
token, as the engine defined it (for models whose logits are the output layer's, with no
soft-capping or scaling: Llama, Qwen, SmolLM). Building the inputs
inside ``forward`` matters under FSDP: the embedding table is only whole (unsharded)
while the wrapping module's forward runs.
"""

from dataclasses import dataclass

import torch
from torch import nn

from vllm_soft.params import SoftThinkingParams
from vllm_soft.replay import batch_inputs_embeds, response_logprobs


@dataclass
class ReplayBatch:
    """Sequences to score: prompt and response ids, soft steps, how they were sampled."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    soft_steps: list[list[dict]]
    knobs: SoftThinkingParams = SoftThinkingParams()
    """The soft knobs the rollouts used (mode, scale, temperature, noise, ...)."""
    temperature: float = 1.0
    """Sampling temperature of discrete tokens."""


class ReplayPolicy(nn.Module):
    """Wraps ``model`` (kept as ``self.model``, so checkpoint names gain a ``model.`` prefix)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for knob in ("final_logit_softcapping", "logit_scale"):
            if getattr(model.config, knob, None) not in (None, 1.0):
                raise ValueError(f"{type(model).__name__}: {knob} is not supported (logits must be the output layer's)")
        self.model = model

    def forward(self, batch: ReplayBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logprobs_BT, mask_BT): response-token log-probs, right-padded, and real-token mask."""
        knobs = batch.knobs
        embedding = self.model.get_input_embeddings().weight
        padded, attention = batch_inputs_embeds(
            embedding, batch.prompt_ids, batch.response_ids, batch.soft_steps, knobs.mode, knobs.scale
        )
        hidden = self.model.get_decoder()(inputs_embeds=padded, attention_mask=attention).last_hidden_state
        # The output layer only where a response token is predicted (not over the prompt).
        spans = [(len(p) - 1, len(r)) for p, r in zip(batch.prompt_ids, batch.response_ids)]
        predicting = torch.cat([hidden[row, start : start + count] for row, (start, count) in enumerate(spans)])
        logits = self.model.get_output_embeddings()(predicting).split([count for _, count in spans])
        responses = max(len(r) for r in batch.response_ids)
        logprobs = padded.new_zeros(len(batch.response_ids), responses, dtype=torch.float32)
        mask = torch.zeros(len(batch.response_ids), responses, dtype=torch.bool, device=padded.device)
        for row, (r, s) in enumerate(zip(batch.response_ids, batch.soft_steps)):
            logprobs[row, : len(r)] = response_logprobs(
                logits[row], r, s, knobs.temperature, batch.temperature, knobs.noise, knobs.alpha, knobs.tau, knobs.emit
            )
            mask[row, : len(r)] = True
        return logprobs, mask
