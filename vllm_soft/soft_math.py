"""The soft step as pure functions; imports only torch, so engine and learner share it.

    logits_BV ──softmax(z/T)──► probs_BV ──top-k, top-p, min-p──► kept support, weights_BK
        │                                                            │ optional noise
        └──► entropy_B (cold stop)                                   ▼ (dirichlet | gumbel)
                                           emitted_B = argmax | sample(weights_BK)
    concept_BH = Σ_k weights_BK · E[token_ids_BK];  next input: replace → concept,
                                                    add → E[emitted] + scale · concept

Every function works on a batch of rows with per-row knobs as tensors, so the engine runs
one step for all its soft requests with no loop over rows; random draws come in as
arguments (``vllm_soft.stateless_random`` makes them from (seed, step)).

Shape suffixes: B rows (requests), V vocabulary, K kept-support slots (padded with
weight 0 and ``kept`` False), H hidden size.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class FilteredDistribution:
    """Step 1-5 of the soft step for a batch of rows, before noise."""

    token_ids_BK: torch.Tensor
    """Candidate token ids by descending probability (int64)."""
    weights_BK: torch.Tensor
    """Renormalised probabilities on the kept support, 0 elsewhere (float32)."""
    kept_BK: torch.Tensor
    """Which slots belong to the kept support (bool)."""
    entropy_B: torch.Tensor
    """Entropy in nats of the full tempered distribution (float32)."""


def filter_distribution(
    logits_BV: torch.Tensor,
    temperature_B: torch.Tensor,
    top_k_B: torch.Tensor,
    top_p_B: torch.Tensor,
    min_p_B: torch.Tensor,
    workspace: torch.Tensor | None = None,
    max_k: int | None = None,
) -> FilteredDistribution:
    """softmax(z / T), keep the top-k, then the shortest prefix reaching top-p, then drop
    p < min_p * p_max; renormalise over what is kept.

    The vocabulary-wide work runs as eager kernels (``filter_with_statistics`` is the
    compiled engine's way): ``workspace`` is an optional contiguous float32 buffer of
    shape (2, R, V), overwritten; passing the same one every step spares
    vocabulary-sized allocations (most of the eager cost at large batch on CPU), and more
    than R rows are processed R at a time, which bounds the memory. ``max_k``:
    ``top_k_B.max()`` when the caller knows it on the host (reading it from a device
    tensor would block on the device).
    """
    rows, vocab = logits_BV.shape
    max_k = int(top_k_B.max()) if max_k is None else max_k
    if workspace is None:
        workspace = torch.empty(2, rows, vocab, dtype=torch.float32, device=logits_BV.device)
    chunk = workspace.shape[1]
    parts = [
        _vocabulary_pass(logits_BV[start : start + chunk], temperature_B[start : start + chunk], max_k, workspace)
        for start in range(0, rows, chunk)
    ]
    top_probs_BK, token_ids_BK, entropy_B = (torch.cat(part) if len(parts) > 1 else part[0] for part in zip(*parts))
    return _kept_support(top_probs_BK, token_ids_BK, entropy_B, top_k_B, top_p_B, min_p_B)


def filter_with_statistics(
    logits_BV: torch.Tensor,
    statistics: tuple[torch.Tensor, ...],
    temperature_B: torch.Tensor,
    top_k_B: torch.Tensor,
    top_p_B: torch.Tensor,
    min_p_B: torch.Tensor,
    max_k: int,
) -> FilteredDistribution:
    """``filter_distribution`` from the logits' ``vocabulary_statistics`` (computed by the
    caller, e.g. compiled): the top-k of the logits from their block maxima, their
    probabilities exp((z - z_max) / T) / Z, then the same filters."""
    maxima_BN, max_B, total_B, entropy_B = statistics
    top_logits_BK, token_ids_BK = block_top_k(logits_BV, max_k, maxima_BN)
    shifted_BK = (top_logits_BK - max_B.unsqueeze(-1)) / temperature_B.float().unsqueeze(-1)
    top_probs_BK = shifted_BK.exp() / total_B.unsqueeze(-1)
    return _kept_support(top_probs_BK, token_ids_BK, entropy_B, top_k_B, top_p_B, min_p_B)


def _kept_support(top_probs_BK, token_ids_BK, entropy_B, top_k_B, top_p_B, min_p_B) -> FilteredDistribution:
    """The top-k, top-p and min-p filters on the ``max_k`` most likely tokens, renormalised."""
    rank_K = torch.arange(top_probs_BK.shape[-1], device=top_probs_BK.device)
    kept = rank_K.unsqueeze(0) < top_k_B.unsqueeze(-1)
    # Top-p on the original probabilities: keep entry i while the mass before it is
    # still short of top_p (so the first entry is always kept).
    mass_before = torch.cumsum(top_probs_BK, dim=-1) - top_probs_BK
    top_p = top_p_B.float().unsqueeze(-1)
    kept &= (top_p >= 1.0) | (mass_before < top_p)
    kept &= top_probs_BK >= min_p_B.float().unsqueeze(-1) * top_probs_BK[:, :1]
    kept &= top_probs_BK > 0
    kept[:, 0] = True  # the most likely token survives every filter
    weights = torch.where(kept, top_probs_BK, torch.zeros_like(top_probs_BK))
    weights = weights / weights.sum(-1, keepdim=True)
    return FilteredDistribution(token_ids_BK, weights, kept, entropy_B)


TOP_K_BLOCK = 128
"""Block width of ``block_top_k``; 128 divides the vocabularies of Llama, SmolLM2 and Qwen."""


def block_maxima(values_BV: torch.Tensor) -> torch.Tensor:
    """Maximum of each block of ``TOP_K_BLOCK`` columns (the last block may be partial)."""
    rows, vocab = values_BV.shape
    blocks = vocab // TOP_K_BLOCK
    maxima = values_BV[:, : blocks * TOP_K_BLOCK].view(rows, blocks, TOP_K_BLOCK).amax(-1)
    if vocab > blocks * TOP_K_BLOCK:
        maxima = torch.cat((maxima, values_BV[:, blocks * TOP_K_BLOCK :].amax(-1, keepdim=True)), dim=1)
    return maxima


def block_top_k(values_BV: torch.Tensor, k: int, maxima_BN: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``values.topk(k, dim=-1, sorted=True)`` for k much smaller than V, reading the
    values about once instead of selecting over the whole row.

    The k largest entries lie in the k blocks (of ``TOP_K_BLOCK`` columns) with the largest
    maxima: a block holding one of them has a maximum >= the k-th largest entry, and at
    most k blocks do. So: block maxima (``maxima_BN`` when the caller has them), the top k
    blocks, then top-k among their entries. Ties between equal values may be broken
    otherwise than ``torch.topk`` breaks them.
    """
    rows, vocab = values_BV.shape
    blocks = vocab // TOP_K_BLOCK
    if k * 8 > blocks:  # few blocks: nothing to gain
        return values_BV.topk(k, dim=-1, sorted=True)
    main_BNW = values_BV[:, : blocks * TOP_K_BLOCK].view(rows, blocks, TOP_K_BLOCK)
    maxima = block_maxima(values_BV) if maxima_BN is None else maxima_BN
    remainder = vocab - blocks * TOP_K_BLOCK
    chosen_BK = maxima.topk(k, dim=-1, sorted=False).indices
    candidates = main_BNW.gather(1, chosen_BK.clamp(max=blocks - 1).unsqueeze(-1).expand(rows, k, TOP_K_BLOCK))
    if remainder:
        tail = values_BV.new_full((rows, TOP_K_BLOCK), float("-inf"))
        tail[:, :remainder] = values_BV[:, blocks * TOP_K_BLOCK :]
        candidates = torch.where((chosen_BK == blocks).unsqueeze(-1), tail.unsqueeze(1), candidates)
    top_BK, local_BK = candidates.reshape(rows, k * TOP_K_BLOCK).topk(k, dim=-1, sorted=True)
    return top_BK, chosen_BK.gather(1, local_BK // TOP_K_BLOCK) * TOP_K_BLOCK + local_BK % TOP_K_BLOCK


def _vocabulary_pass(logits_CV: torch.Tensor, temperature_C: torch.Tensor, max_k: int, workspace: torch.Tensor):
    """(top-k probabilities, their ids, entropy) of p = softmax(s), s = z / T, for up to R
    rows, with eager kernels.

    The only work over the whole vocabulary: scale, softmax, top-k (``block_top_k``), then the entropy without
    a log per entry. With log p_i = s_i - s_max + log p_max (the top-1 entry fixes the
    normaliser), H = -Σ p log p = -log p_max - Σ p_i (s_i - s_max): two terms >= 0, so no
    cancellation (float32 error ~1e-5 nats at V = 49k, like summing p log p), and masked
    tokens (s = -inf, p = 0) give NaN products that ``nansum`` skips. About 6 vocabulary
    passes; ``entr`` would add a scalar log per entry, several times slower on CPU.
    """
    rows = logits_CV.shape[0]
    scaled_CV, probs_CV = workspace[0, :rows], workspace[1, :rows]
    torch.div(logits_CV, temperature_C.float().unsqueeze(-1), out=scaled_CV)
    torch.softmax(scaled_CV, dim=-1, out=probs_CV)
    top_probs_CK, token_ids_CK = block_top_k(probs_CV, max_k)
    scaled_CV.sub_(scaled_CV.gather(-1, token_ids_CK[:, :1]))
    spread_C = torch.mul(probs_CV, scaled_CV, out=scaled_CV).nansum(-1)
    entropy_C = (-torch.log(top_probs_CK[:, 0]) - spread_C).clamp_min(0.0)  # rounding: never below 0
    return top_probs_CK, token_ids_CK, entropy_C


def vocabulary_statistics(logits_CV: torch.Tensor, temperature_C: torch.Tensor):
    """Every whole-vocabulary quantity the soft step needs, as one expression that
    ``torch.compile`` fuses into a few reads of the logits with no vocabulary-sized
    temporaries (eagerly it would allocate several; ``filter_distribution`` then uses the
    eager pass instead).

    Returns the logits' block maxima (``block_maxima``; softmax keeps their order), the
    row maximum z_max, the normaliser Z = Σ e_i and the entropy of softmax(z / T), where
    d_i = (z_i - z_max) / T <= 0 and e_i = exp(d_i) <= 1: H = log Z - Σ e_i d_i / Z, two
    terms >= 0, so no cancellation. Masked tokens (z = -inf) have e = 0 and are skipped.
    """
    maxima_CN = block_maxima(logits_CV)
    max_C1 = maxima_CN.amax(-1, keepdim=True)
    shifted_CV = (logits_CV - max_C1) * temperature_C.float().reciprocal().unsqueeze(-1)
    exp_CV = shifted_CV.exp()
    total_C = exp_CV.sum(-1)
    spread_C = torch.where(exp_CV > 0, exp_CV * shifted_CV, 0.0).sum(-1)
    entropy_C = total_C.log() - spread_C / total_C
    return maxima_CN, max_C1.squeeze(-1), total_C, entropy_C


NOISE_CODES = {"none": 0, "dirichlet": 1, "gumbel": 2, "gaussian": 3}
"""Per-row noise kinds as integers, for batched selection (``SoftThinkingParams.noise``)."""
EMIT_CODES = {"argmax": 0, "sample": 1}
MODE_CODES = {"replace": 0, "add": 1, "gate": 2, "hidden": 3}
ACTION_CODES = {"sampled": 0, "token": 1}
MIXTURE_CODES = {"probability": 0, "uniform": 1}


def _per_row(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float or (B,) tensor as a float64 (B, 1) column (or a scalar tensor), on ``like``'s device."""
    value = torch.as_tensor(value, dtype=torch.float64, device=like.device)
    return value.unsqueeze(-1) if value.dim() == 1 else value


def gumbel_log_weights(weights_BK: torch.Tensor, tau_B: float | torch.Tensor, gumbel_BK: torch.Tensor) -> torch.Tensor:
    """Gumbel-Softmax on each row's support (weights > 0), as log-weights: log softmax((log w
    + g) / tau), float64, -inf off the support. Kept in log space because a density needs
    log x: weights far below the top one underflow to 0 in exp."""
    support = weights_BK > 0
    logits = (weights_BK.double().clamp_min(1e-300).log() + gumbel_BK) / _per_row(tau_B, weights_BK)
    return torch.log_softmax(logits.masked_fill(~support, float("-inf")), dim=-1)


def dirichlet_log_weights(weights_BK: torch.Tensor, log_gamma_BK: torch.Tensor) -> torch.Tensor:
    """Dirichlet(alpha * w) on each row's support from log Gamma(alpha * w_k) draws, as
    log-weights: the log of the normalised gammas, log softmax of their logs (tiny draws
    neither underflow nor lose their share), float64, -inf off the support."""
    support = weights_BK > 0
    return torch.log_softmax(log_gamma_BK.double().masked_fill(~support, float("-inf")), dim=-1)


def sample_slots(weights_BK: torch.Tensor, uniform_BN: torch.Tensor) -> torch.Tensor:
    """Slots drawn from each row's weights by inverting the CDF, one per uniform: (B,) for
    (B,) uniforms, (B, N) for (B, N)."""
    single = uniform_BN.dim() == 1
    uniform = uniform_BN.unsqueeze(-1) if single else uniform_BN
    cdf_B1K = torch.cumsum(weights_BK.double(), dim=-1).unsqueeze(1)
    below_BN = (cdf_B1K < uniform.unsqueeze(-1) * cdf_B1K[..., -1:]).sum(-1)
    slots_BN = torch.minimum(below_BN, ((weights_BK > 0).sum(-1) - 1).unsqueeze(-1))
    return slots_BN[:, 0] if single else slots_BN


def multiplex_draws(
    weights_BK: torch.Tensor,
    uniform_BN: torch.Tensor,
    gumbel_BK: torch.Tensor,
    count_B: torch.Tensor,
    replacement_B: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiplex Thinking's draws: ``count_B`` tokens from each row's weights, with or
    without replacement; returns (draws_BK, first_slot_B), both int64.

    ``draws_BK`` is what the record keeps (``records.SoftStep.draws``): with replacement, how
    many draws took each slot; without, each slot's draw rank (1 first, 0 undrawn; at most
    the support's size are drawn). ``uniform_BN``: N >= count uniforms per row; ``gumbel_BK``:
    one Gumbel draw per slot. With replacement, draw j inverts the CDF at uniform j; without, the ranks are the order
    of log w + Gumbel (Gumbel-top-k: the same law as drawing one at a time and
    renormalising, Vieira 2014).
    """
    rows, slots = weights_BK.shape
    draws_N = uniform_BN.shape[1]
    # With replacement: the first count_B uniforms, one slot each, counted per slot.
    slot_BN = sample_slots(weights_BK, uniform_BN)
    taken_BN = torch.arange(draws_N, device=weights_BK.device).unsqueeze(0) < count_B.unsqueeze(-1)
    counts_BK = torch.zeros(rows, slots, dtype=torch.int64, device=weights_BK.device)
    counts_BK = counts_BK.scatter_add(1, slot_BN, taken_BN.long())
    # Without replacement: rank slots by perturbed log-weight.
    keys_BK = weights_BK.double().clamp_min(1e-300).log() + gumbel_BK
    keys_BK = keys_BK.masked_fill(weights_BK <= 0, float("-inf"))
    order_BK = keys_BK.argsort(dim=-1, descending=True)
    rank_BK = torch.empty_like(order_BK).scatter_(1, order_BK, torch.arange(1, slots + 1, device=weights_BK.device).expand(rows, slots))
    ranks_BK = torch.where((rank_BK <= count_B.unsqueeze(-1)) & (weights_BK > 0), rank_BK, 0)
    draws_BK = torch.where(replacement_B.unsqueeze(-1), counts_BK, ranks_BK)
    first_B = torch.where(replacement_B, slot_BN[:, 0], order_BK[:, 0])
    return draws_BK, first_B


def multiplex_log_weights(
    weights_BK: torch.Tensor, draws_BK: torch.Tensor, replacement_B: torch.Tensor, uniform_B: torch.Tensor
) -> torch.Tensor:
    """Log-weights of the fed-back mixture of the drawn tokens (``multiplex_draws``), float64,
    -inf on undrawn slots: each draw weighted by its probability, or uniformly where
    ``uniform_B``; with replacement a token drawn c times counts c times."""
    counts_BK = torch.where(replacement_B.unsqueeze(-1), draws_BK, (draws_BK > 0).long()).double()
    log_mass_BK = torch.where(uniform_B.unsqueeze(-1), 0.0, weights_BK.double().clamp_min(1e-300).log()) + counts_BK.log()
    return torch.log_softmax(log_mass_BK, dim=-1)


def gaussian_log_density(offset_BH: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor:
    """log N(offset; 0, sigma^2 I) per row, float64: the density of a concept embedding
    perturbed by isotropic Gaussian noise, ``offset`` being the perturbed concept minus the
    policy's own. Differentiable in ``offset``."""
    hidden = offset_BH.shape[-1]
    sigma = _per_row(sigma_B, offset_BH)
    squared = ((offset_BH.double() / sigma) ** 2).sum(-1)
    return -0.5 * squared - hidden * torch.log(sigma).squeeze(-1) - 0.5 * hidden * math.log(2.0 * math.pi)


def concrete_log_density(
    log_base_SK: torch.Tensor, log_noisy_SK: torch.Tensor, valid_SK: torch.Tensor, tau: float | torch.Tensor
) -> torch.Tensor:
    """log density of Gumbel-Softmax weights x = softmax((log base + g) / tau) on the valid
    slots (the Concrete distribution; Maddison et al. 2017), per row, in float64, from
    ``log_noisy`` = log x:

        log (n-1)! + (n-1) log tau + Σ_k [log base_k - (tau+1) log x_k] - n logsumexp_k(log base_k - tau log x_k)

    ``tau``: one value, or one per row. Differentiable in ``log_base``; a row with one valid
    slot has density 0 (no choice).
    """
    tau_S1 = _per_row(tau, log_base_SK)
    log_base = log_base_SK.double().masked_fill(~valid_SK, 0.0)
    log_x = log_noisy_SK.double().masked_fill(~valid_SK, 0.0)
    n = valid_SK.sum(-1).double()
    per_slot = (log_base - (tau_S1 + 1.0) * log_x).sum(-1)  # both terms are 0 on invalid slots
    normaliser = torch.logsumexp((log_base - tau_S1 * log_x).masked_fill(~valid_SK, float("-inf")), dim=-1)
    return torch.lgamma(n) + (n - 1.0) * torch.log(tau_S1).squeeze(-1) + per_slot - n * normaliser


def dirichlet_log_density(
    log_base_SK: torch.Tensor, log_noisy_SK: torch.Tensor, valid_SK: torch.Tensor, alpha: float | torch.Tensor
) -> torch.Tensor:
    """log density of x ~ Dirichlet(alpha * base) on the valid slots, per row, in float64,
    from ``log_noisy`` = log x:

        lgamma(alpha) - Σ_k lgamma(alpha base_k) + Σ_k (alpha base_k - 1) log x_k

    (``base`` sums to 1 over the valid slots). ``alpha``: one value, or one per row.
    Differentiable in ``log_base``; a row with one valid slot has density 0.
    """
    alpha_S1 = _per_row(alpha, log_base_SK)
    concentration = (alpha_S1 * log_base_SK.double().exp()).masked_fill(~valid_SK, 1.0)
    log_x = log_noisy_SK.double().masked_fill(~valid_SK, 0.0)
    terms = (-torch.lgamma(concentration) + (concentration - 1.0) * log_x).masked_fill(~valid_SK, 0.0).sum(-1)
    return torch.lgamma(alpha_S1).squeeze(-1) + terms


def token_logprob(log_base_SK: torch.Tensor, emitted_SK: torch.Tensor) -> torch.Tensor:
    """log base_y (S,), float64: the emitted token scored on the kept support. The action of
    a step without noise, of a step that ends thinking (its mixture is never fed back, so
    only the token acts), and of every step under ``action: token``."""
    return torch.where(emitted_SK, log_base_SK.double(), 0.0).sum(-1)


def multiplex_logprob(
    log_base_SK: torch.Tensor, draws_SK: torch.Tensor, valid_SK: torch.Tensor, replacement_S: torch.Tensor
) -> torch.Tensor:
    """log-probability (S,) of a step's multiplex draws, float64: with replacement Σ_k c_k log
    base_k (c_k: draws of slot k); without, the ordered draws' Σ_j log base_(j) - log Σ of
    base over the slots not drawn before j (the mass left to draw from, as a logsumexp: no
    1 - Σ cancellation). Differentiable in ``log_base``."""
    log_base = log_base_SK.double().masked_fill(~valid_SK, float("-inf"))
    draws = draws_SK.long()
    with_replacement = torch.where(draws > 0, draws.double() * log_base.masked_fill(~valid_SK, 0.0), 0.0).sum(-1)
    # Slot l was drawn before slot k: 0 < rank_l < rank_k.
    before_SKL = (draws.unsqueeze(1) > 0) & (draws.unsqueeze(1) < draws.unsqueeze(-1))
    remaining_SK = torch.logsumexp(log_base.unsqueeze(1).masked_fill(before_SKL, float("-inf")), dim=-1)
    terms = torch.where(draws > 0, log_base - remaining_SK, 0.0)
    without_replacement = terms.masked_fill(~valid_SK, 0.0).sum(-1)
    return torch.where(replacement_S, with_replacement, without_replacement)


def step_logprob(
    log_base_BK: torch.Tensor,
    log_weights_BK: torch.Tensor,
    valid_BK: torch.Tensor,
    emitted_BK: torch.Tensor,
    draws_BK: torch.Tensor,
    knobs: "ActionKnobs",
) -> torch.Tensor:
    """Rollout log-probability (B,) of each soft step's action, float64, under the
    distribution ``log_base`` (log soft weights on the kept support, before noise):
    ``log_weights`` are the log fed-back weights, ``emitted`` marks the emitted slot,
    ``draws`` the multiplex draws. The engine (``soft_step.decide``) and the learner
    (``replay.response_logprobs``) both score with this function.

    Per row: a step that ended thinking, or any step under ``action: token``, scores the
    emitted token, log base_y. Otherwise the action is what the step drew: without noise
    the emitted token; with noise on the weights the fed-back weights, by their density
    (Concrete for Gumbel, Dirichlet), plus log x_y for a sampled emission; with Gaussian
    noise the perturbed concept embedding, by ``knobs.embedding_density_B``, plus log
    base_y for a sampled emission; under multiplex the draws.
    """
    token = token_logprob(log_base_BK, emitted_BK)
    logprob = token
    for kind in ("dirichlet", "gumbel"):  # one order: graphs cache across processes
        if kind not in knobs.noise_kinds:
            continue
        if kind == "gumbel":
            density = concrete_log_density(log_base_BK, log_weights_BK, valid_BK, knobs.tau_B)
        else:
            density = dirichlet_log_density(log_base_BK, log_weights_BK, valid_BK, knobs.alpha_B)
        emission = torch.where(emitted_BK, log_weights_BK.double().masked_fill(~valid_BK, 0.0), 0.0).sum(-1)
        density = density + torch.where(knobs.sample_B, emission, 0.0)
        logprob = torch.where(knobs.noise_B == NOISE_CODES[kind], density, logprob)
    if "gaussian" in knobs.noise_kinds:
        density = knobs.embedding_density_B + torch.where(knobs.sample_B, token, 0.0)
        logprob = torch.where(knobs.noise_B == NOISE_CODES["gaussian"], density, logprob)
    if knobs.any_multiplex:
        draws = multiplex_logprob(log_base_BK, draws_BK, valid_BK, knobs.replacement_B)
        logprob = torch.where(knobs.multiplex_B > 0, draws, logprob)
    return torch.where(knobs.token_only_B | knobs.ended_B, token, logprob)


@dataclass
class ActionKnobs:
    """What ``step_logprob`` needs to know of each row's knobs, as (B,) tensors, plus the
    host's knowledge of which branches occur (so no branch needs a device read)."""

    noise_B: torch.Tensor
    """``NOISE_CODES`` of each row."""
    alpha_B: torch.Tensor
    tau_B: torch.Tensor
    sample_B: torch.Tensor
    """Whether the row samples its emitted token (bool)."""
    multiplex_B: torch.Tensor
    """Number of multiplex draws, 0: no multiplex (int64)."""
    replacement_B: torch.Tensor
    """Multiplex draws with replacement (bool)."""
    token_only_B: torch.Tensor
    """``action: token``: the step is scored as its emitted token (bool)."""
    ended_B: torch.Tensor
    """The step ended thinking (bool): its mixture was never fed back."""
    noise_kinds: frozenset[str]
    any_multiplex: bool
    embedding_density_B: torch.Tensor | None = None
    """Rows with Gaussian noise: ``gaussian_log_density`` of their perturbed concept (float64)."""


def concept_embeddings(
    token_ids_BK: torch.Tensor, weights_BK: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Σ_k w_k · E[id_k] per row, in float32; ``embed`` maps token ids to embeddings."""
    rows, slots = token_ids_BK.shape
    return weighted_embeddings(weights_BK, embed(token_ids_BK.reshape(-1)).reshape(rows, slots, -1))


def weighted_embeddings(weights_BK: torch.Tensor, embeds_BKH: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k · e_k per row, in float32 (the concept embedding from looked-up embeddings)."""
    return (weights_BK.float().unsqueeze(-1) * embeds_BKH.float()).sum(dim=1)


def mix_inputs(add_B: torch.Tensor, token_embeds_BH: torch.Tensor, concept_BH: torch.Tensor, scale_B: torch.Tensor) -> torch.Tensor:
    """Next input embeddings of soft positions, float32: the concept (replace) or, where
    ``add_B``, E[y] + scale · concept (Soft Concept Mixing)."""
    added = token_embeds_BH.float() + scale_B.float().unsqueeze(-1) * concept_BH
    return torch.where(add_B.unsqueeze(-1), added, concept_BH)


def normalized_concept(weights_BK: torch.Tensor, embeds_BKH: torch.Tensor) -> torch.Tensor:
    """HRPO's latent input h~ = Σ_k w_k · e_k / ||w||_2 per row, float32: the mixture
    rescaled so that a one-hot step gives the token's own embedding and a spread one is
    not shrunk towards zero."""
    weights_BK = weights_BK.float()
    norm_B1 = weights_BK.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return weighted_embeddings(weights_BK / norm_B1, embeds_BKH)


GATE_SHARPNESS = 8.0
"""HRPO's c: a = exp(-c · softplus(-Λ) · r)."""


@dataclass(frozen=True)
class GateTensors:
    """HRPO's gate: r = σ(W_r ê + b_r), i = σ(W_i ê + b_i), a = exp(-c softplus(-Λ) r)."""

    weight_r_HH: torch.Tensor
    bias_r_H: torch.Tensor
    weight_i_HH: torch.Tensor
    bias_i_H: torch.Tensor
    lambda_H: torch.Tensor


def gate_retention(token_embeds_BH: torch.Tensor, gate: GateTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_BH, i_BH): how much of the token embedding is kept, and the input gate on the
    latent, both in (0, 1), from the emitted token's embedding ê."""
    dtype = gate.lambda_H.dtype
    token_BH = token_embeds_BH.to(dtype)
    r_BH = torch.sigmoid(torch.nn.functional.linear(token_BH, gate.weight_r_HH, gate.bias_r_H))
    i_BH = torch.sigmoid(torch.nn.functional.linear(token_BH, gate.weight_i_HH, gate.bias_i_H))
    a_BH = torch.exp(-GATE_SHARPNESS * torch.nn.functional.softplus(-gate.lambda_H) * r_BH)
    return a_BH, i_BH


def gated_inputs(
    token_embeds_BH: torch.Tensor, latent_BH: torch.Tensor, gate: GateTensors
) -> tuple[torch.Tensor, torch.Tensor]:
    """HRPO's hybrid input e = a ⊙ ê + sqrt(1 - a² + 1e-8) ⊙ (i ⊙ h~) and a, in the gate's
    dtype; ``latent_BH`` is h~ (``normalized_concept``). The 1e-8 keeps the square root's
    gradient finite where a reaches 1."""
    a_BH, i_BH = gate_retention(token_embeds_BH, gate)
    dtype = a_BH.dtype
    mixed_BH = a_BH * token_embeds_BH.to(dtype) + torch.sqrt(1.0 - a_BH * a_BH + 1e-8) * (i_BH * latent_BH.to(dtype))
    return mixed_BH, a_BH


def gate_lambda_for(retention_H: torch.Tensor) -> torch.Tensor:
    """Λ such that a = u^r for a per-dimension u in (0, 1) (HRPO's initialisation):
    exp(-c softplus(-Λ) r) = u^r  <=>  softplus(-Λ) = -log(u) / c."""
    target = -torch.log(retention_H) / GATE_SHARPNESS  # softplus(-Λ) > 0
    return -(torch.expm1(target)).log()


BUDGET_END_CODE = 3
"""``records.END_REASONS`` index of 'budget'."""


def thinking_transition(
    emitted_B: torch.Tensor,
    entropy_B: torch.Tensor,
    low_entropy_streak_B: torch.Tensor,
    soft_steps_done_B: torch.Tensor,
    think_end_id_B: torch.Tensor,
    entropy_threshold_B: torch.Tensor,
    patience_B: torch.Tensor,
    max_soft_steps_B: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each soft step's fate: (emitted token, new low-entropy streak, end code), all (B,).

    ``think_end_id_B`` < 0: no think-end token; ``max_soft_steps_B`` <= 0: no budget. End
    codes index ``vllm_soft.records.END_REASONS``. Emitting the think-end token ends
    thinking (think_end). Cold stop: entropy below the threshold for ``patience``
    consecutive steps replaces the emitted token by the think-end token (when there is
    one). The budget does the same on step ``max_soft_steps``.
    """
    low = entropy_B < entropy_threshold_B
    streak = torch.where(low, low_entropy_streak_B + 1, 0)
    has_think_end = think_end_id_B >= 0
    think_end = has_think_end & (emitted_B == think_end_id_B)
    cold_stop = ~think_end & (streak >= patience_B)
    budget = ~think_end & ~cold_stop & (max_soft_steps_B > 0) & (soft_steps_done_B + 1 >= max_soft_steps_B)
    end_code = torch.where(think_end, 1, torch.where(cold_stop, 2, torch.where(budget, BUDGET_END_CODE, 0)))
    forced = (cold_stop | budget) & has_think_end
    return torch.where(forced, think_end_id_B, emitted_B), streak, end_code


def latent_transition(
    argmax_B: torch.Tensor,
    soft_steps_done_B: torch.Tensor,
    latent_steps_B: torch.Tensor,
    think_end_id_B: torch.Tensor,
    latent_token_id_B: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mode 'hidden' (Coconut): each step's fate by its count alone, (latent_B, emitted_B,
    end_code_B). Steps 0..K-1 (K = ``latent_steps_B``) are latent: the next input is the
    hidden state, the text shows the latent token (< 0: the step's argmax). Without a
    think-end token thinking ends with latent step K-1 (its hidden state is still fed
    back); with one, step K emits it, forced, and thinking ends there. No entropy, no
    emitted think-end token, ends a latent span early: Coconut's K is fixed."""
    latent_B = soft_steps_done_B < latent_steps_B
    has_think_end = think_end_id_B >= 0
    placeholder_B = torch.where(latent_token_id_B >= 0, latent_token_id_B, argmax_B)
    emitted_B = torch.where(latent_B | ~has_think_end, placeholder_B, think_end_id_B)
    last_step_B = torch.where(has_think_end, latent_steps_B, latent_steps_B - 1)
    end_code_B = torch.where(soft_steps_done_B >= last_step_B, BUDGET_END_CODE, 0)
    return latent_B, emitted_B, end_code_B


def embedding_rms(embed: Callable[[torch.Tensor], torch.Tensor], vocab_size: int, hidden_size: int,
                  device: torch.device | str = "cpu", chunk: int = 8192) -> float:
    """The embedding table's RMS entry sqrt(mean E_ij^2), in float64, read ``chunk`` rows at
    a time through ``embed`` (ids -> rows), so no float64 copy of the table is made. Gaussian
    noise's unit; times sqrt(H) it is the RMS row norm, Coconut's latent norm. Engine and
    learner both call this."""
    total = 0.0
    for start in range(0, vocab_size, chunk):
        ids = torch.arange(start, min(start + chunk, vocab_size), device=device)
        total += float(embed(ids).detach().double().pow(2).sum())
    return (total / (vocab_size * hidden_size)) ** 0.5


def rescaled_latents(hidden_BH: torch.Tensor, target_norm_B: torch.Tensor) -> torch.Tensor:
    """Hidden states as latent inputs, in float32 at least (float64 stays float64): each
    rescaled to L2 norm ``target_norm_B`` where it is > 0 (the embedding table's RMS row
    norm), as is where it is 0."""
    hidden_BH = hidden_BH.to(torch.promote_types(hidden_BH.dtype, torch.float32))
    norm_B = hidden_BH.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
    factor_B = torch.where(target_norm_B > 0, target_norm_B.to(hidden_BH.dtype) / norm_B, 1.0)
    return hidden_BH * factor_B.unsqueeze(-1)
