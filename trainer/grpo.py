"""GRPO as pure functions: group advantages and the clipped token-level loss; imports only torch.

    rewards_N, group_ids_N ──group_advantages──► advantages_B (one per sequence)
                                                      │
    logprobs_BT, old_logprobs_BT ──► ratio_BT ──► min(r·A, clip(r)·A) = objective_BT
    old_logprobs_BT, rollout_logprobs_BT ──► w_BT = min(exp(old - rollout), tis_cap)
    logprobs_BT, ref_logprobs_BT ──► kl_BT (k3)
                                                      ▼
          loss = Σ_real tokens (-w_BT·objective_BT + beta·kl_BT) / num_tokens

Shape suffixes: N samples (rewards), B sequences, T response tokens (padded). A ``mask_BT``
(bool, or float 0/1) marks real response tokens; padding may hold anything, even -inf or
NaN log-probs: every per-token term is selected with ``torch.where`` before it is summed,
so padding never reaches the loss or its gradient.

Two views of the behaviour policy meet here. ``old_logprobs`` are the learner's log-probs under the weights
that produced the rollout (the behaviour policy as the learner computes it); they anchor
the clipped ratio. ``rollout_logprobs`` are what the engine reported for the same tokens;
the two differ by kernel and precision noise (and by more if the engine ran stale or
quantised weights). Truncated importance sampling (TIS, as in verl and "Your efficient RL
framework secretly brings you off-policy RL training") reweights each token by
exp(old - rollout), capped, to correct for that mismatch.
"""

import math
from dataclasses import dataclass

import torch


def group_advantages(
    rewards_N: torch.Tensor, group_ids_N: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """A_i = r_i - mean(group of i), divided by (std(group) + eps) when ``scale_by_std``.

    ``group_ids_N`` are any integers (not necessarily contiguous or sorted); samples with
    the same id form a group. ``scale_by_std=False`` is Dr. GRPO (TRL: ``scale_rewards``).

    The std is the population std (divide by the group size, not size - 1): a group of one
    sample then gets advantage 0 instead of NaN, and a group whose rewards are all equal
    gets exactly 0 either way. TRL uses the unbiased std; for G samples the two differ by a
    factor sqrt(G / (G - 1)), a constant rescaling of every advantage for a fixed G.
    """
    if rewards_N.shape != group_ids_N.shape or rewards_N.dim() != 1:
        raise ValueError(
            f"rewards_N and group_ids_N must be 1-D of the same length (got {tuple(rewards_N.shape)} "
            f"and {tuple(group_ids_N.shape)})"
        )
    rewards_N = rewards_N if rewards_N.is_floating_point() else rewards_N.float()
    unique_ids_G, group_N = torch.unique(group_ids_N, return_inverse=True)
    zeros_G = rewards_N.new_zeros(unique_ids_G.numel())
    count_G = zeros_G.index_add(0, group_N, torch.ones_like(rewards_N))
    mean_G = zeros_G.index_add(0, group_N, rewards_N) / count_G
    centred_N = rewards_N - mean_G[group_N]
    if not scale_by_std:
        return centred_N
    std_G = (zeros_G.index_add(0, group_N, centred_N.square()) / count_G).sqrt()
    return centred_N / (std_G[group_N] + eps)


@dataclass
class GRPOLossConfig:
    """Knobs of the clipped GRPO loss; field names follow TRL's ``GRPOConfig``."""

    epsilon: float = 0.2
    """Lower clip: the ratio is clipped below at 1 - epsilon (TRL ``epsilon``)."""
    epsilon_high: float = 0.28
    """Upper clip: the ratio is clipped above at 1 + epsilon_high (TRL ``epsilon_high``; DAPO clip-higher)."""
    beta: float = 0.0
    """Coefficient of the k3 KL to the frozen reference; 0 disables it (TRL ``beta``)."""
    tis_cap: float | None = 2.0
    """Cap of the truncated importance weight exp(old - rollout); None disables TIS
    (TRL ``vllm_importance_sampling_cap``)."""

    def __post_init__(self):
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1) so that 1 - epsilon > 0 (got {self.epsilon}); TRL uses 0.2")
        if not 0.0 <= self.epsilon_high < math.inf:
            raise ValueError(f"epsilon_high must be a finite number >= 0 (got {self.epsilon_high}); DAPO uses 0.28")
        if not 0.0 <= self.beta < math.inf:
            raise ValueError(f"beta must be a finite number >= 0 (got {self.beta}); 0 disables the KL term")
        if self.tis_cap is not None and not 1.0 <= self.tis_cap < math.inf:
            raise ValueError(
                f"tis_cap must be a finite number >= 1 or None (got {self.tis_cap}); "
                "verl uses 2.0, None disables truncated importance sampling"
            )


def masked_mean(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Mean of ``values_BT`` weighted by ``mask_BT`` (bool or 0/1: the mean over real tokens).

    Values where the mask is 0 are never read, so they may be NaN or inf; no tokens gives 0.
    """
    mask_BT = mask_BT.to(values_BT.dtype)
    total = torch.where(mask_BT != 0, values_BT * mask_BT, 0.0).sum()
    return total / mask_BT.sum().clamp(min=1.0)


def logprob_gaps(learner_logprobs_BT: torch.Tensor, rollout_logprobs_BT: torch.Tensor) -> torch.Tensor:
    """|learner - rollout| log-prob per token (detached): how exactly the learner replays the engine."""
    return (learner_logprobs_BT.detach() - rollout_logprobs_BT).abs()


def logprob_gap(
    learner_logprobs_BT: torch.Tensor, rollout_logprobs_BT: torch.Tensor, mask_BT: torch.Tensor
) -> torch.Tensor:
    """Mean ``logprob_gaps`` over real tokens."""
    return masked_mean(logprob_gaps(learner_logprobs_BT, rollout_logprobs_BT), mask_BT)


def grpo_loss(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    config: GRPOLossConfig,
    ref_logprobs_BT: torch.Tensor | None = None,
    rollout_logprobs_BT: torch.Tensor | None = None,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped GRPO loss, token-mean over the batch (DAPO), and detached scalar metrics.

    Per real token: -w · min(r·A, clip(r, 1 - epsilon, 1 + epsilon_high)·A) + beta · kl,
    with r = exp(logprobs - old_logprobs); w = min(exp(old - rollout), tis_cap), detached,
    when ``rollout_logprobs_BT`` is given and ``tis_cap`` is set, else 1; and
    kl = exp(ref - logp) - (ref - logp) - 1 (k3) when ``ref_logprobs_BT`` is given.
    The KL is logged whenever a reference is given and enters the loss when beta > 0.

    The sum over real tokens is divided by their count, or by ``num_tokens`` when given.
    For gradient accumulation pass the real-token count of the whole batch (summed over
    micro-batches, and over ranks under data parallelism if their gradients are summed):
    the micro-batch losses then add up to the full-batch token mean.

    Metrics, over this call's real tokens: ``clip_fraction`` (share where the clipped term
    won the min and differed), ``ratio_mean``, ``ratio_max``, ``kl`` (mean, 0 without a
    reference), ``tis_weight_mean`` (1 without TIS).
    """
    if config.beta > 0 and ref_logprobs_BT is None:
        raise ValueError(f"beta={config.beta} needs ref_logprobs_BT; pass the reference log-probs or set beta=0")
    if num_tokens is not None and not num_tokens > 0:
        raise ValueError(f"num_tokens must be > 0 (got {num_tokens}); pass the real-token count of the whole batch")
    real_BT = mask_BT != 0
    one = logprobs_BT.new_ones(())
    count = real_BT.sum().to(logprobs_BT.dtype)
    denominator = count.clamp(min=1.0) if num_tokens is None else logprobs_BT.new_tensor(float(num_tokens))

    old_logprobs_BT = old_logprobs_BT.detach()  # the behaviour policy is a constant of the step
    ratio_BT = torch.where(real_BT, logprobs_BT - old_logprobs_BT, 0.0).exp()
    advantages_BT = advantages_B.to(logprobs_BT.dtype).unsqueeze(-1)
    unclipped_BT = ratio_BT * advantages_BT
    clipped_BT = ratio_BT.clamp(1.0 - config.epsilon, 1.0 + config.epsilon_high) * advantages_BT
    objective_BT = torch.minimum(unclipped_BT, clipped_BT)

    weight_BT = torch.ones_like(ratio_BT)
    if rollout_logprobs_BT is not None and config.tis_cap is not None:
        log_weight_BT = torch.where(real_BT, old_logprobs_BT - rollout_logprobs_BT.detach(), 0.0)
        weight_BT = log_weight_BT.exp().clamp(max=config.tis_cap)
    loss = torch.where(real_BT, -weight_BT * objective_BT, 0.0).sum() / denominator

    kl = logprobs_BT.new_zeros(())
    if ref_logprobs_BT is not None:
        log_ref_ratio_BT = torch.where(real_BT, ref_logprobs_BT - logprobs_BT, 0.0)
        kl_BT = log_ref_ratio_BT.exp() - log_ref_ratio_BT - 1.0
        kl = masked_mean(kl_BT, real_BT)
        if config.beta > 0:
            loss = loss + config.beta * kl_BT.sum() / denominator  # padding's kl is exactly 0

    has_tokens = count > 0
    metrics = {
        "clip_fraction": masked_mean((clipped_BT < unclipped_BT).to(ratio_BT.dtype), real_BT),
        "ratio_mean": masked_mean(ratio_BT, real_BT),
        "ratio_max": torch.where(has_tokens, ratio_BT.masked_fill(~real_BT, -math.inf).max(), one),
        "kl": kl,
        "tis_weight_mean": torch.where(has_tokens, masked_mean(weight_BT, real_BT), one),
    }
    return loss, {name: value.detach() for name, value in metrics.items()}
