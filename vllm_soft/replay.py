"""Replaying a rollout in one parallel forward pass: the learner's side of the soft step.

Imports only torch (and the pure modules beside it). A rollout is a prompt, the response tokens, and the trace of its soft
steps (``soft_steps``: the engine's ``vllm_soft.records.SoftStep`` records; replay reads
``position``, ``token_ids``, ``weights``, ``log_weights``, ``draws``, ``logprob``,
``end_reason`` and ``latent``). From it:

    coconut_latents ───────► mode 'hidden': the policy's own latents after each prompt, a
                             pass over the prompts then one cached position per latent
                             (``latent_gap``: against the recorded ones)
    soft_inputs_embeds ────► inputs of prompt + response[:-1] (padded or packed), the
                             input after every soft step that thinking continued from
                             being its mixture (replace), E[y] + scale * mixture (add),
                             the gated input (gate) or the latent (hidden);
                             differentiable in the embedding table
    response_logprobs ─────► log-probability of each response token under the policy that
                             produced it: at a soft step, ``soft_math.step_logprob`` of the
                             soft distribution renormalised over the recorded support (the
                             engine's own scoring: log w_y without noise or under action
                             'token'; the noise density of the recorded log-weights; the
                             multiplex draws; log w_y at a step that ended thinking: no
                             mixture was fed back); after
                             thinking (or for plain requests), log softmax(z / T)[y];
                             a forced token has log-probability 0 (no choice was made)

With the rollout's weights, these equal the engine's rollout log-probabilities up to
numerical noise.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vllm_soft import stateless_random
from vllm_soft.params import SoftThinkingParams
from vllm_soft.soft_math import (
    MODE_CODES,
    NOISE_CODES,
    ActionKnobs,
    GateTensors,
    concept_embeddings,
    embedding_rms,
    gaussian_log_density,
    gated_inputs,
    mix_inputs,
    normalized_concept,
    rescaled_latents,
    step_logprob,
)

Gate = GateTensors | Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""The model's HRPO gate: its tensors, or a function (ê, h~) -> (gated inputs, a) that
applies them (the learner's trainable module, ``trainer.gate.SoftGate``)."""


@dataclass
class RecordedSupports:
    """The recorded supports of soft steps, padded to the largest (S steps, K slots)."""

    token_ids_SK: torch.Tensor
    weights_SK: torch.Tensor
    """Fed-back weights, float64, 0 on padding."""
    log_weights_SK: torch.Tensor
    """Their recorded logs, float64, -inf on padding and zero weights."""
    draws_SK: torch.Tensor
    """Multiplex draws, int64, 0 without."""
    valid_SK: torch.Tensor


def _support_tensors(steps: list[dict], device) -> RecordedSupports:
    """Recorded supports, weights, log-weights, draws and which slots are real, padded."""
    slots = max(len(step["token_ids"]) for step in steps)
    token_ids = torch.zeros(len(steps), slots, dtype=torch.long)
    weights = torch.zeros(len(steps), slots, dtype=torch.float64)
    log_weights = torch.full((len(steps), slots), float("-inf"), dtype=torch.float64)
    draws = torch.zeros(len(steps), slots, dtype=torch.long)
    valid = torch.zeros(len(steps), slots, dtype=torch.bool)
    for row, step in enumerate(steps):
        size = len(step["token_ids"])
        token_ids[row, :size] = torch.tensor(step["token_ids"])
        weights[row, :size] = torch.tensor(step["weights"], dtype=torch.float64)
        log_weights[row, :size] = torch.tensor(
            [float("-inf") if value is None else value for value in step["log_weights"]], dtype=torch.float64
        )
        if step.get("draws") is not None:
            draws[row, :size] = torch.tensor(step["draws"])
        valid[row, :size] = True
    return RecordedSupports(*(tensor.to(device) for tensor in (token_ids, weights, log_weights, draws, valid)))


def concept_noise(steps: list[dict], hidden_size: int, device) -> torch.Tensor | None:
    """The Gaussian noise the engine added to each step's concept (float64, (S, H)):
    noise_scale times the standard normals of (seed, soft step), regenerated; zero for
    steps without it. None when no step has any."""
    noisy = [row for row, step in enumerate(steps) if step.get("noise_scale")]
    if not noisy:
        return None
    seeds = torch.tensor([stateless_random.as_int64(steps[row]["seed"]) for row in noisy], device=device)
    counters = torch.tensor([steps[row]["position"] for row in noisy], device=device)  # soft step k sits at k
    scales = torch.tensor([steps[row]["noise_scale"] for row in noisy], dtype=torch.float64, device=device)
    noise_SH = torch.zeros(len(steps), hidden_size, dtype=torch.float64, device=device)
    noise_SH[noisy] = scales.unsqueeze(-1) * stateless_random.normals(seeds, counters, hidden_size)
    return noise_SH


def recorded_concepts(steps: list[dict], embed, device) -> torch.Tensor:
    """The concept embeddings (S, H, float32) the engine fed back after ``steps``: the
    recorded mixture of ``embed``'s embeddings, plus the step's Gaussian noise if it had
    any. What the learner replays, and what the engine rebuilds after a preemption."""
    supports = _support_tensors(steps, device)
    concept_SH = concept_embeddings(supports.token_ids_SK, supports.weights_SK, embed)
    noise_SH = concept_noise(steps, concept_SH.shape[-1], device)
    return concept_SH if noise_SH is None else concept_SH + noise_SH.float()


def recorded_latents(steps: list[dict], embed, device) -> torch.Tensor:
    """HRPO's latent h~ (S, H, float32) of each step: its recorded mixture over the
    weights' L2 norm (``soft_math.normalized_concept``), what mode 'gate' mixes in."""
    supports = _support_tensors(steps, device)
    rows, slots = supports.token_ids_SK.shape
    embeds_SKH = embed(supports.token_ids_SK.reshape(-1)).reshape(rows, slots, -1)
    return normalized_concept(supports.weights_SK, embeds_SKH)


def soft_inputs_embeds(
    embed_tokens: torch.nn.Module,
    input_ids_BT: torch.Tensor,
    response_ids: list[list[int]],
    soft_steps: list[list[dict]],
    rows: list[int],
    response_starts: list[int],
    mode: str = "replace",
    scale: float = 1.0,
    gate: Gate | None = None,
    latents: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Input embeddings (B, T, H) of ``input_ids_BT`` as the engine fed them: response i
    lies in row ``rows[i]``, its token p at column ``response_starts[i] + p``, and the input
    after each soft step that thinking continued from is its concept (``recorded_concepts``:
    the mixture, plus Gaussian noise if the step had it; ``replace``), E[y] + scale *
    concept (``add``) or HRPO's gated input from E[y] and the latent (``gate``, with the
    model's ``gate``, ``Gate``; the latent is detached, as HRPO does, so gradients reach the
    gate and E[y]); in mode ``hidden``, each latent step's input is row k of response i's
    ``latents[i]`` (K, H) (``coconut_latents``: the policy's own, not the recorded ones).

    ``embed_tokens`` is the model's input embedding (``get_input_embeddings()``), called and
    never indexed: on some families it is more than the table's row (Gemma's is the row
    times sqrt(H)), and vLLM's ``embed_input_ids``, which the engine mixes, is the same.
    One embedding call for all tokens and one for all soft supports: the backward of a
    lookup fills a vocabulary-sized gradient, so it runs once per batch, not per sequence.
    """
    if mode not in MODE_CODES:
        raise ValueError(f"mode must be one of {', '.join(MODE_CODES)} (got {mode!r})")
    device = embed_tokens.weight.device
    inputs_BTH = embed_tokens(input_ids_BT.to(device))
    if mode == "hidden":
        return _with_latents(inputs_BTH, response_ids, soft_steps, rows, response_starts, latents)
    fed_back, step_rows, columns = [], [], []
    for row, start, response, steps in zip(rows, response_starts, response_ids, soft_steps):
        for step in steps:
            if step["end_reason"] is None and step["position"] < len(response) - 1:
                fed_back.append(step)
                step_rows.append(row)
                columns.append(start + step["position"])
    if not fed_back:
        return inputs_BTH
    # The engine's own functions (soft_step.soft_step), with the table as the embedding.
    index = (torch.tensor(step_rows, device=device), torch.tensor(columns, device=device))
    if mode == "gate":
        if gate is None:
            raise ValueError("replaying mode 'gate' needs the model's gate (vllm_soft.gate)")
        latent_SH = recorded_latents(fed_back, embed_tokens, device).detach()
        gated = gate if callable(gate) else functools.partial(gated_inputs, gate=gate)
        mixed_SH = gated(inputs_BTH[index], latent_SH)[0]
        return inputs_BTH.index_put(index, mixed_SH.to(inputs_BTH.dtype))
    concept_SH = recorded_concepts(fed_back, embed_tokens, device)
    steps = len(fed_back)
    add_S = torch.full((steps,), mode == "add", device=device)
    mixed_SH = mix_inputs(add_S, inputs_BTH[index], concept_SH, torch.full((steps,), scale, device=device))
    return inputs_BTH.index_put(index, mixed_SH.to(inputs_BTH.dtype))


def _with_latents(inputs_BTH, response_ids, soft_steps, rows, response_starts, latents) -> torch.Tensor:
    """Mode 'hidden': ``inputs_BTH`` with each latent step's input from ``latents``."""
    index, vectors = ([], []), []
    for i, (row, start, response, steps) in enumerate(zip(rows, response_starts, response_ids, soft_steps)):
        for step in steps:
            if step.get("latent") is not None and step["position"] < len(response) - 1:
                if latents is None:
                    raise ValueError("replaying mode 'hidden' needs the policy's latents (coconut_latents)")
                index[0].append(row)
                index[1].append(start + step["position"])
                vectors.append(latents[i][step["position"]])
    if not vectors:
        return inputs_BTH
    device = inputs_BTH.device
    position = (torch.tensor(index[0], device=device), torch.tensor(index[1], device=device))
    return inputs_BTH.index_put(position, torch.stack(vectors).to(inputs_BTH.dtype))


LatentDecoder = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, object], tuple[torch.Tensor, object]
]
"""``(inputs_embeds (N, T, H), attention_mask (N, C + T), position_ids (N, T), cache) ->
(final-normed last hidden states (N, T, H), cache)``: a causal decoder that extends the KV
cache it is given (None: a new one) by T positions; C is the positions cached before."""


def coconut_latents(
    decoder: LatentDecoder,
    embed_tokens: torch.nn.Module,
    prompt_ids: list[list[int]],
    latent_steps: int,
    rescale_latent: bool,
) -> torch.Tensor:
    """Coconut's latents (N, K, H) after each prompt, as the engine computes them: latent k
    is the final-normed last hidden state of the last position of [prompt | latents
    0..k-1], rescaled to the RMS row norm of the model's input embeddings
    (``embed_tokens``, as in ``soft_inputs_embeds``) with ``rescale_latent`` (the norm a
    constant of the step: detached), in the embedding's dtype.

    Sequential passes over a KV cache, as Coconut's training does: one pass over the
    prompts, left-padded (the padding masked out; on the left, a cache slot's distance to
    the newest one is the tokens' distance, which sliding-window layers count), then one
    position per latent, at each row's own position id. Every pass stays in the graph, cache included, so gradients
    flow through the whole latent chain."""
    table_VH = embed_tokens.weight
    device, dtype = table_VH.device, table_VH.dtype
    count = len(prompt_ids)
    if latent_steps == 0:
        return table_VH.new_zeros(count, 0, table_VH.shape[1])
    lengths = torch.tensor([len(ids) for ids in prompt_ids], device=device)
    width = int(lengths.max())
    padding = width - lengths
    padded_ids = torch.tensor([[0] * (width - len(ids)) + ids for ids in prompt_ids], device=device)
    mask = (torch.arange(width, device=device) >= padding[:, None]).long()
    positions = (torch.arange(width, device=device) - padding[:, None]).clamp_min(0)
    vocab_size, hidden_size = table_VH.shape
    norm = (embedding_rms(embed_tokens, vocab_size, hidden_size, device) * hidden_size**0.5
            if rescale_latent else 0.0)
    target_N = torch.full((count,), norm, dtype=torch.float64, device=device)
    hidden_NTH, cache = decoder(embed_tokens(padded_ids), mask, positions, None)
    last_NH = hidden_NTH[:, -1]
    latents = []
    for step in range(latent_steps):
        latent_NH = rescaled_latents(last_NH, target_N).to(dtype)
        latents.append(latent_NH)
        if step + 1 == latent_steps:
            break
        mask = torch.cat((mask, mask.new_ones(count, 1)), dim=1)
        hidden_NTH, cache = decoder(latent_NH[:, None], mask, (lengths + step)[:, None], cache)
        last_NH = hidden_NTH[:, 0]
    return torch.stack(latents, dim=1)


def latent_gap(latents: list[torch.Tensor], soft_steps: list[list[dict]]) -> float | None:
    """Largest relative L2 error ||computed - recorded|| / ||recorded|| over the recorded
    latents of ``soft_steps`` (``latents[i]``: sequence i's computed (K, H)); None if none."""
    gaps = []
    for computed, steps in zip(latents, soft_steps):
        for step in steps:
            if step.get("latent") is not None:
                recorded = torch.tensor(step["latent"], dtype=torch.float64)
                error = computed[step["position"]].detach().double().cpu() - recorded
                gaps.append(float(error.norm() / recorded.norm().clamp_min(1e-30)))
    return max(gaps) if gaps else None


def rebuild_inputs_embeds(
    embed_tokens: torch.nn.Module,
    prompt_ids: list[int],
    response_ids: list[int],
    soft_steps: list[dict],
    mode: str = "replace",
    scale: float = 1.0,
    gate: Gate | None = None,
) -> torch.Tensor:
    """Input embeddings (T, H) of one ``prompt + response[:-1]`` as the engine fed them."""
    input_ids = torch.tensor([prompt_ids + response_ids[:-1]], dtype=torch.long)
    return soft_inputs_embeds(
        embed_tokens, input_ids, [response_ids], [soft_steps], [0], [len(prompt_ids)], mode, scale, gate
    )[0]


def response_logprobs(
    logits_RV: torch.Tensor,
    response_ids: list[int],
    soft_steps: list[dict],
    knobs: SoftThinkingParams,
    temperature: float,
    embed_tokens: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Log-probability (R,) of each response token; ``logits_RV[i]`` predicts token i.

    ``knobs``: the soft knobs the rollout used; ``temperature``: the request's sampling
    temperature for discrete tokens (<= 0 means greedy, scored at temperature 1);
    ``embed_tokens``: the model's input embedding (as in ``soft_inputs_embeds``), needed
    with Gaussian noise (the fed-back concept's density is measured from the policy's own
    concept).
    """
    device = logits_RV.device
    targets = torch.tensor(response_ids, dtype=torch.long, device=device)
    scale = temperature if temperature > 0 else 1.0
    logprobs_R = torch.log_softmax(logits_RV.float() / scale, dim=-1).gather(1, targets[:, None])[:, 0]
    if not soft_steps:
        return logprobs_R
    if knobs.noise == "auto":
        raise ValueError("response_logprobs needs the knobs the engine resolved (soft_knobs(completion), "
                         "Sample.soft_knobs): noise 'auto' is decided per request by its temperature")
    supports = _support_tensors(soft_steps, device)
    valid_SK = supports.valid_SK
    rows = torch.tensor([s["position"] for s in soft_steps], device=device)
    support_logits_SK = logits_RV[rows].float().gather(1, supports.token_ids_SK) / knobs.temperature
    support_logits_SK = support_logits_SK.masked_fill(~valid_SK, float("-inf"))
    emitted_SK = (supports.token_ids_SK == targets[rows].unsqueeze(1)) & valid_SK
    log_base_SK = torch.log_softmax(support_logits_SK, dim=-1)
    steps = len(soft_steps)
    embedding_density_S = None
    if knobs.noise == "gaussian":
        if embed_tokens is None:
            raise ValueError("response_logprobs: Gaussian noise needs embed_tokens (the model's input embedding)")
        # Fed back: the recorded mixture + noise; the policy's concept: its own weights' mixture.
        weight_gap_SK = supports.weights_SK - log_base_SK.double().exp()
        offset_SH = concept_embeddings(supports.token_ids_SK, weight_gap_SK, embed_tokens).double()
        offset_SH = offset_SH + concept_noise(soft_steps, offset_SH.shape[-1], device)
        scales_S = torch.tensor([s["noise_scale"] or 1.0 for s in soft_steps], dtype=torch.float64, device=device)
        embedding_density_S = gaussian_log_density(offset_SH, scales_S)

    def per_step(value, dtype):
        return torch.full((steps,), value, dtype=dtype, device=device)

    action = ActionKnobs(
        noise_B=per_step(NOISE_CODES[knobs.noise], torch.long),
        alpha_B=per_step(knobs.alpha, torch.float64),
        tau_B=per_step(knobs.tau, torch.float64),
        sample_B=per_step(knobs.emit == "sample", torch.bool),
        multiplex_B=per_step(knobs.multiplex, torch.long),
        replacement_B=per_step(knobs.multiplex_replacement, torch.bool),
        token_only_B=per_step(knobs.action == "token", torch.bool),
        ended_B=torch.tensor([s["end_reason"] is not None for s in soft_steps], device=device),
        noise_kinds=frozenset({knobs.noise}),
        any_multiplex=knobs.multiplex > 0,
        embedding_density_B=embedding_density_S,
    )
    soft_logprob_S = step_logprob(
        log_base_SK, supports.log_weights_SK, valid_SK, emitted_SK, supports.draws_SK, action
    ).float()
    forced_S = torch.tensor([s["logprob"] is None for s in soft_steps], device=device)
    soft_logprob_S = torch.where(forced_S, torch.zeros_like(soft_logprob_S), soft_logprob_S)
    return logprobs_R.index_put((rows,), soft_logprob_S)
