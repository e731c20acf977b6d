"""The soft step as pure functions; imports only torch, so engine and learner share it.

    logits_BV ──softmax(z/T)──► probs_BV ──top-k, top-p, min-p──► kept support, weights_BK
        │                                                            │ optional noise
        └──► entropy_B (cold stop)                                   ▼ (dirichlet | gumbel)
                                           emitted_B = argmax | sample(weights_BK)
    concept_BH = Σ_k weights_BK · E[token_ids_BK];  next input: replace → concept,
                                                    add → E[emitted] + scale · concept

Shape suffixes: B rows (requests), V vocabulary, K kept-support slots (padded with
weight 0 and ``kept`` False), H hidden size.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

THINKING_END_REASONS = ("think_end", "cold_stop", "budget")


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
) -> FilteredDistribution:
    """softmax(z / T), keep the top-k, then the shortest prefix reaching top-p, then drop
    p < min_p * p_max; renormalise over what is kept.

    ``workspace``: optional contiguous float32 buffer of shape (>= B, V), overwritten;
    passing the same one every step spares a vocabulary-sized allocation per step (most
    of this function's cost at large batch on CPU).
    """
    if workspace is None:
        probs_BV = torch.empty(logits_BV.shape, dtype=torch.float32, device=logits_BV.device)
    else:
        probs_BV = workspace[: logits_BV.shape[0]]
    torch.div(logits_BV, temperature_B.float().unsqueeze(-1), out=probs_BV)
    torch.softmax(probs_BV, dim=-1, out=probs_BV)
    max_k = int(top_k_B.max())
    top_probs_BK, token_ids_BK = probs_BV.topk(max_k, dim=-1, sorted=True)
    # entr(p) = -p log p, 0 at p = 0; computed in place, the probabilities are no longer needed.
    entropy_B = torch.special.entr(probs_BV, out=probs_BV).sum(-1)
    rank_K = torch.arange(max_k, device=logits_BV.device)
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


def dirichlet_noise(weights_K: torch.Tensor, alpha: float, generator: torch.Generator | None) -> torch.Tensor:
    """Resample weights ~ Dirichlet(alpha * weights) over the support (weights > 0).

    Sampled in log space, log Gamma(a) = log Gamma(a + 1) + log(U) / a, so that tiny
    concentrations do not underflow to an all-zero draw.
    """
    support = weights_K > 0
    concentration = (alpha * weights_K[support]).double()
    uniform = torch.rand(concentration.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    gamma_plus_one = torch._standard_gamma(concentration + 1.0, generator=generator)
    log_gamma = gamma_plus_one.log() + uniform.log() / concentration
    noisy = torch.zeros_like(weights_K)
    noisy[support] = torch.softmax(log_gamma, dim=-1).to(weights_K.dtype)
    return noisy


def gumbel_noise(weights_K: torch.Tensor, tau: float, generator: torch.Generator | None) -> torch.Tensor:
    """Gumbel-Softmax on the support: softmax((log w + g) / tau), g ~ Gumbel(0, 1)."""
    support = weights_K > 0
    uniform = torch.rand(int(support.sum()), generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))
    logits = (weights_K[support].double().log() + gumbel) / tau
    noisy = torch.zeros_like(weights_K)
    noisy[support] = torch.softmax(logits, dim=-1).to(weights_K.dtype)
    return noisy


def apply_noise(
    weights_K: torch.Tensor, noise: str, alpha: float, tau: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One row's weights after the requested noise ('none', 'dirichlet' or 'gumbel')."""
    if noise == "none":
        return weights_K
    if noise == "dirichlet":
        return dirichlet_noise(weights_K, alpha, generator)
    if noise == "gumbel":
        return gumbel_noise(weights_K, tau, generator)
    raise ValueError(f"noise must be one of none, dirichlet, gumbel (got {noise!r})")


LOG_WEIGHT_FLOOR = -690.0
"""log of the smallest weight a density sees (~1e-300): a draw that underflowed to 0 stays finite."""


def _floored_log(weights_SK: torch.Tensor) -> torch.Tensor:
    """log of (noisy) weights in float64, never below ``LOG_WEIGHT_FLOOR``."""
    return weights_SK.double().clamp_min(0.0).log().clamp_min(LOG_WEIGHT_FLOOR)


def concrete_log_density(log_base_SK: torch.Tensor, noisy_SK: torch.Tensor, valid_SK: torch.Tensor, tau: float) -> torch.Tensor:
    """log density of Gumbel-Softmax weights ``noisy`` = softmax((log base + g) / tau) on the
    valid slots (the Concrete distribution; Maddison et al. 2017), per row, in float64:

        log (n-1)! + (n-1) log tau + Σ_k [log base_k - (tau+1) log x_k] - n logsumexp_k(log base_k - tau log x_k)

    Differentiable in ``log_base``; a row with one valid slot has density 0 (no choice).
    """
    log_base = log_base_SK.double().masked_fill(~valid_SK, 0.0)
    log_x = _floored_log(noisy_SK).masked_fill(~valid_SK, 0.0)
    n = valid_SK.sum(-1).double()
    per_slot = (log_base - (tau + 1.0) * log_x).sum(-1)  # both terms are 0 on invalid slots
    normaliser = torch.logsumexp((log_base - tau * log_x).masked_fill(~valid_SK, float("-inf")), dim=-1)
    return torch.lgamma(n) + (n - 1.0) * math.log(tau) + per_slot - n * normaliser


def dirichlet_log_density(log_base_SK: torch.Tensor, noisy_SK: torch.Tensor, valid_SK: torch.Tensor, alpha: float) -> torch.Tensor:
    """log density of ``noisy`` ~ Dirichlet(alpha * base) on the valid slots, per row, in float64:

        lgamma(alpha) - Σ_k lgamma(alpha base_k) + Σ_k (alpha base_k - 1) log x_k

    (``base`` sums to 1 over the valid slots). Differentiable in ``log_base``; a row with one
    valid slot has density 0.
    """
    concentration = alpha * log_base_SK.double().exp().masked_fill(~valid_SK, 1.0)
    log_x = _floored_log(noisy_SK)
    terms = (-torch.lgamma(concentration) + (concentration - 1.0) * log_x).masked_fill(~valid_SK, 0.0).sum(-1)
    return math.lgamma(alpha) + terms


def soft_step_logprob(
    log_base_SK: torch.Tensor,
    weights_SK: torch.Tensor,
    valid_SK: torch.Tensor,
    emitted_SK: torch.Tensor,
    noise: str,
    alpha: float,
    tau: float,
    emit: str,
) -> torch.Tensor:
    """Log-probability (S,) of what each soft step chose, under the distribution ``log_base``
    (log soft weights on the kept support, before noise); ``weights`` are the weights fed
    back, ``emitted`` marks the emitted slot.

    Without noise the choice is the emitted token: log base_y. With noise the weights
    themselves are the action, drawn from a density (Gumbel-Softmax or Dirichlet); a sampled
    emission adds log w_y (not a function of ``base``).
    """
    if noise == "none":
        return torch.where(emitted_SK, log_base_SK.double(), 0.0).sum(-1)
    if noise == "gumbel":
        density = concrete_log_density(log_base_SK, weights_SK, valid_SK, tau)
    elif noise == "dirichlet":
        density = dirichlet_log_density(log_base_SK, weights_SK, valid_SK, alpha)
    else:
        raise ValueError(f"noise must be one of none, dirichlet, gumbel (got {noise!r})")
    if emit == "sample":
        density = density + torch.where(emitted_SK, _floored_log(weights_SK), 0.0).sum(-1)
    return density


def emit_index(weights_K: torch.Tensor, emit: str, generator: torch.Generator | None) -> int:
    """Slot of the emitted token: argmax of the weights, or a sample from them."""
    if emit == "argmax":
        return int(weights_K.argmax())
    if emit == "sample":
        return int(torch.multinomial(weights_K.float(), 1, generator=generator))
    raise ValueError(f"emit must be argmax or sample (got {emit!r})")


def concept_embeddings(
    token_ids_BK: torch.Tensor, weights_BK: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Σ_k w_k · E[id_k] per row, in float32; ``embed`` maps token ids to embeddings."""
    rows, slots = token_ids_BK.shape
    embeds_BKH = embed(token_ids_BK.reshape(-1)).reshape(rows, slots, -1).float()
    return (weights_BK.float().unsqueeze(-1) * embeds_BKH).sum(dim=1)


def mix_input(mode: str, token_embed_H: torch.Tensor, concept_H: torch.Tensor, scale: float) -> torch.Tensor:
    """Next input embedding of a soft position: the concept (replace) or E[y] + scale · concept (add)."""
    if mode == "replace":
        return concept_H
    if mode == "add":
        return token_embed_H.float() + scale * concept_H
    raise ValueError(f"mode must be replace or add (got {mode!r})")


def thinking_transition(
    *,
    emitted: int,
    entropy: float,
    low_entropy_streak: int,
    soft_steps_done: int,
    think_end_id: int | None,
    entropy_threshold: float,
    patience: int,
    max_soft_steps: int | None,
) -> tuple[int, int, str | None]:
    """Decide one soft step's fate: (emitted token, new low-entropy streak, end reason or None).

    Cold stop: entropy below the threshold for ``patience`` consecutive steps replaces
    the emitted token by the think-end token. The budget does the same on step
    ``max_soft_steps``. Emitting the think-end token ends thinking too.
    """
    streak = low_entropy_streak + 1 if entropy < entropy_threshold else 0
    if think_end_id is not None and emitted == think_end_id:
        return emitted, streak, "think_end"
    if streak >= patience:
        return (think_end_id if think_end_id is not None else emitted), streak, "cold_stop"
    if max_soft_steps is not None and soft_steps_done + 1 >= max_soft_steps:
        return (think_end_id if think_end_id is not None else emitted), streak, "budget"
    return emitted, streak, None
