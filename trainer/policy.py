"""The learner's policy: a Hugging Face causal LM that replays rollouts, soft steps included.

``ReplayPolicy.forward(batch)`` rebuilds each sequence's input embeddings from its trace
(``vllm_soft.replay``), runs one forward pass over the batch with the sequences of a prompt
packed in one row (``trainer.packing``: the prompt is computed once), applies the output
layer at response positions only (with the family's logit scaling or soft-capping, as
vLLM's logits processor applies it: ``output_logits``), and returns the log-probability of
every response token, as the engine defined it. Inputs go through the model's own input
embedding (``get_input_embeddings()``, called: Gemma scales the row by sqrt(H)), as vLLM's
``embed_input_ids`` does for the engine. Building the inputs inside ``forward`` matters
under FSDP: the embedding table is only whole (unsharded) while the wrapping module's
forward runs.
"""

import json
from dataclasses import dataclass

import torch
from torch import nn

from rollout.sample import Sample
from trainer.attention import BLOCK_ATTENTION
from trainer.gate import SoftGate
from trainer.packing import pack_by_prompt
from vllm_soft.params import SoftThinkingParams
from vllm_soft.replay import LatentDecoder, coconut_latents, latent_gap, response_logprobs, soft_inputs_embeds
from vllm_soft.soft_math import GateTensors


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

    @classmethod
    def from_samples(cls, samples: list[Sample], temperature: float) -> "ReplayBatch":
        """The samples, replayed with the soft knobs the engine reports it generated them
        with (``Sample.soft_knobs``: engine defaults included). One batch replays under one
        set of knobs, so samples made with different ones are an error naming them."""
        knob_sets = {json.dumps(s.soft_knobs, sort_keys=True) for s in samples if s.soft_knobs is not None}
        if len(knob_sets) > 1:
            first, second = sorted(knob_sets)[:2]
            raise ValueError(f"samples of one batch were generated with different soft-thinking knobs: {first} and {second}")
        knobs = SoftThinkingParams().with_overrides(json.loads(knob_sets.pop())) if knob_sets else SoftThinkingParams()
        return cls(
            prompt_ids=[s.prompt_token_ids for s in samples],
            response_ids=[s.response_token_ids for s in samples],
            soft_steps=[s.soft_steps for s in samples],
            knobs=knobs,
            temperature=temperature,
        )


class ReplayPolicy(nn.Module):
    """Wraps ``model`` (kept as ``self.model``, so checkpoint names gain a ``model.`` prefix)
    and, for mode 'gate', the trainable HRPO gate drawn from ``gate`` (``self.soft_gate``)."""

    def __init__(self, model: nn.Module, share_prompts: bool = True, gate: GateTensors | None = None):
        super().__init__()
        model.set_attn_implementation(BLOCK_ATTENTION)  # plain forwards still run SDPA
        self.model = model
        self.share_prompts = share_prompts
        self.soft_gate = SoftGate(gate) if gate is not None else None
        self.hidden_share = (0.0, 0)
        """The last forward's (sum over gated inputs of mean sqrt(1 - a^2), their count)."""
        self.latent_replay_gap: float | None = None
        """Mode 'hidden': the last forward's largest relative error of its latents against
        the recorded ones (None without latents)."""

    def forward(self, batch: ReplayBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logprobs_BT, mask_BT): response-token log-probs, right-padded, and real-token mask."""
        knobs = batch.knobs
        packed = pack_by_prompt(batch.prompt_ids, batch.response_ids, self.share_prompts)
        embedding = self.model.get_input_embeddings()
        shares = []

        def gate(token_embeds_SH, latent_SH):
            mixed_SH, a_SH = self.soft_gate(token_embeds_SH, latent_SH)
            shares.append(torch.sqrt(1.0 - a_SH.detach().double() ** 2).mean(-1))
            return mixed_SH, a_SH

        if knobs.mode == "gate" and self.soft_gate is None:
            raise ValueError("samples generated in mode 'gate' need a policy with the gate (algorithm.mode: gate)")
        latents = self._latents(batch, embedding) if knobs.mode == "hidden" else None
        inputs = soft_inputs_embeds(
            embedding, packed.input_ids_BT, batch.response_ids, batch.soft_steps, packed.rows, packed.response_starts,
            knobs.mode, knobs.scale, gate if self.soft_gate is not None else None, latents,
        )
        if self.soft_gate is not None and not shares:
            # Every forward runs the gate, with a zero share in the loss when nothing was gated:
            # under FSDP each rank's gate unit must join the same gathers and gradient reductions.
            zeros = inputs.new_zeros(1, inputs.shape[-1])
            inputs = inputs + 0.0 * self.soft_gate(zeros, zeros)[0].sum().to(inputs.dtype)
        share_S = torch.cat(shares) if shares else torch.zeros(0)
        self.hidden_share = (float(share_S.sum()), share_S.numel())
        device = inputs.device
        hidden = self.model.get_decoder()(
            inputs_embeds=inputs, position_ids=packed.position_ids_BT.to(device),
            attention_blocks=packed.attention_blocks().to(device),
        ).last_hidden_state
        # The output layer only where a response token is predicted (not over the prompt).
        counts = [len(r) for r in batch.response_ids]
        rows = torch.tensor([row for row, count in zip(packed.rows, counts) for _ in range(count)], device=device)
        columns = torch.tensor(
            [c for i in range(len(counts)) for c in packed.predicting_columns(i)], device=device
        )
        logits = output_logits(self.model, hidden[rows, columns]).split(counts)
        logprobs = inputs.new_zeros(len(counts), max(counts), dtype=torch.float32)
        mask = torch.zeros(len(counts), max(counts), dtype=torch.bool, device=device)
        for row, (r, s) in enumerate(zip(batch.response_ids, batch.soft_steps)):
            logprobs[row, : len(r)] = response_logprobs(logits[row], r, s, knobs, batch.temperature, embedding)
            mask[row, : len(r)] = True
        return logprobs, mask

    def _latents(self, batch: ReplayBatch, embedding: nn.Module) -> list[torch.Tensor]:
        """Mode 'hidden': each sequence's latents (K, H) from this policy, computed once per
        prompt (a group's samples share their latent span: latent steps draw nothing), and
        ``latent_replay_gap`` against the recorded ones. Always K passes, whatever the
        batch holds, so that FSDP ranks join the same gathers."""
        prompts = list(dict.fromkeys(map(tuple, batch.prompt_ids)))
        computed = coconut_latents(latent_decoder(self.model), embedding, [list(p) for p in prompts],
                                   batch.knobs.max_soft_steps, batch.knobs.rescale_latent)
        row = {prompt: i for i, prompt in enumerate(prompts)}
        latents = [computed[row[tuple(prompt)]] for prompt in batch.prompt_ids]
        self.latent_replay_gap = latent_gap(latents, batch.soft_steps)
        return latents


def output_logits(model: nn.Module, hidden_NH: torch.Tensor) -> torch.Tensor:
    """Next-token logits of final hidden states, as the model's family defines them (and
    vLLM's logits processor computes them): the output layer, then Cohere's ``logit_scale``
    (times), Granite's ``logits_scaling`` (divided by), Gemma's
    ``final_logit_softcapping`` (cap * tanh(z / cap))."""
    logits = model.get_output_embeddings()(hidden_NH)
    config = model.config
    if getattr(config, "logit_scale", None) not in (None, 1.0):
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None) not in (None, 1.0):
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def latent_decoder(model: nn.Module) -> LatentDecoder:
    """``model``'s decoder as ``coconut_latents`` calls it: a pass that extends a KV cache
    (Hugging Face's, created by the first pass)."""
    decoder = model.get_decoder()

    def decode(inputs_embeds, attention_mask, position_ids, cache):
        out = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=cache, use_cache=True)
        return out.last_hidden_state, out.past_key_values

    return decode
