"""GRPO math against hand-computed values and a per-token Python-loop reference."""

import math

import pytest
import torch

from trainer.grpo import GRPOLossConfig, group_advantages, grpo_loss, logprob_gap, masked_mean


def test_group_advantages_by_hand_with_non_contiguous_ids():
    rewards = torch.tensor([1.0, 0.0, 3.0, 4.0, 2.0])
    group_ids = torch.tensor([7, -2, 7, -2, 7])
    # group 7: rewards 1, 3, 2 -> mean 2, population std sqrt(2/3); group -2: 0, 4 -> mean 2, std 2
    centred = torch.tensor([-1.0, -2.0, 1.0, 2.0, 0.0])
    torch.testing.assert_close(group_advantages(rewards, group_ids, scale_by_std=False), centred)
    std = torch.tensor([math.sqrt(2 / 3), 2.0, math.sqrt(2 / 3), 2.0, math.sqrt(2 / 3)])
    torch.testing.assert_close(group_advantages(rewards, group_ids, eps=0.0), centred / std)
    torch.testing.assert_close(group_advantages(rewards, group_ids), centred / (std + 1e-6))


def test_group_advantages_equal_rewards_and_singletons_give_zero():
    rewards = torch.tensor([0.5, 0.5, 0.5, 1.0, 0.0, 3.0])
    group_ids = torch.tensor([4, 4, 4, 9, 9, 100])  # 100 is a group of one
    for scale_by_std in (True, False):
        advantages = group_advantages(rewards, group_ids, scale_by_std=scale_by_std)
        assert torch.isfinite(advantages).all()
        assert advantages[[0, 1, 2, 5]].eq(0).all()
    torch.testing.assert_close(group_advantages(rewards, group_ids)[3:5], torch.tensor([1.0, -1.0]), atol=1e-5, rtol=0)


def _reference_loss(logprobs, old, advantages, mask, config, ref=None, rollout=None, num_tokens=None):
    """One token at a time in plain Python floats: the loss and the metrics of ``grpo_loss``."""
    pg_sum = kl_loss_sum = kl_sum = weight_sum = ratio_sum = 0.0
    clipped = count = 0
    ratios = []
    for b in range(logprobs.shape[0]):
        a = advantages[b].item()
        for t in range(logprobs.shape[1]):
            if not mask[b, t]:
                continue
            count += 1
            ratio = math.exp(logprobs[b, t].item() - old[b, t].item())
            ratios.append(ratio)
            ratio_sum += ratio
            clipped_ratio = min(max(ratio, 1 - config.epsilon), 1 + config.epsilon_high)
            objective = min(ratio * a, clipped_ratio * a)
            clipped += clipped_ratio * a < ratio * a
            weight = 1.0
            if rollout is not None and config.tis_cap is not None:
                weight = min(math.exp(old[b, t].item() - rollout[b, t].item()), config.tis_cap)
            weight_sum += weight
            pg_sum += -weight * objective
            if ref is not None:
                x = ref[b, t].item() - logprobs[b, t].item()
                kl = math.exp(x) - x - 1
                kl_sum += kl
                kl_loss_sum += config.beta * kl
    denominator = num_tokens if num_tokens is not None else count
    metrics = {
        "clip_fraction": clipped / count,
        "ratio_mean": ratio_sum / count,
        "ratio_max": max(ratios),
        "kl": kl_sum / count,
        "tis_weight_mean": weight_sum / count,
    }
    return (pg_sum + kl_loss_sum) / denominator, metrics


def _random_batch(seed, B=6, T=9, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    old = -randn(B, T).abs() - 0.1
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    lengths[0] = T
    mask = torch.arange(T) < lengths.unsqueeze(-1)
    batch = dict(
        logprobs=old + 0.3 * randn(B, T),  # ratios spread well past the clip band
        old=old,
        advantages=randn(B),
        mask=mask,
        ref=old + 0.2 * randn(B, T),
        rollout=old + 0.5 * randn(B, T),  # some weights above the cap of 1.5
    )
    # Padding holds garbage that must not leak into the loss.
    for name in ("logprobs", "old", "ref", "rollout"):
        batch[name] = batch[name].masked_fill(~mask, -math.inf if name == "logprobs" else math.nan)
    return batch


@pytest.mark.parametrize("with_kl", [False, True])
@pytest.mark.parametrize("with_tis", [False, True])
def test_loss_matches_per_token_reference(with_kl, with_tis):
    config = GRPOLossConfig(epsilon=0.1, epsilon_high=0.15, beta=0.05 if with_kl else 0.0, tis_cap=1.5)
    for seed in range(3):
        batch = _random_batch(seed)
        ref = batch["ref"] if with_kl else None
        rollout = batch["rollout"] if with_tis else None
        args = (batch["logprobs"], batch["old"], batch["advantages"], batch["mask"], config)
        loss, metrics = grpo_loss(*args, ref_logprobs_BT=ref, rollout_logprobs_BT=rollout)
        expected_loss, expected_metrics = _reference_loss(*args, ref=ref, rollout=rollout)
        assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
        assert 0 < expected_metrics["clip_fraction"] < 1  # the example exercises the clip
        if with_tis:
            assert expected_metrics["tis_weight_mean"] != 1.0
        for name, value in expected_metrics.items():
            assert metrics[name].item() == pytest.approx(value, abs=1e-6), name
            assert not metrics[name].requires_grad


def test_tis_disabled_by_cap_none_ignores_rollout_logprobs():
    batch = _random_batch(0)
    args = (batch["logprobs"], batch["old"], batch["advantages"], batch["mask"], GRPOLossConfig(tis_cap=None))
    loss, metrics = grpo_loss(*args, rollout_logprobs_BT=batch["rollout"])
    assert loss.item() == pytest.approx(grpo_loss(*args)[0].item(), abs=1e-12)
    assert metrics["tis_weight_mean"].item() == 1.0


@pytest.mark.parametrize("with_tis", [False, True])
def test_gradient_at_ratio_one_is_minus_weighted_advantage_over_tokens(with_tis):
    batch = _random_batch(1)
    mask = batch["mask"]
    logprobs = batch["old"].clone().requires_grad_(True)
    rollout = batch["rollout"] if with_tis else None
    config = GRPOLossConfig(tis_cap=1.5)
    loss, _ = grpo_loss(logprobs, batch["old"], batch["advantages"], mask, config, rollout_logprobs_BT=rollout)
    loss.backward()
    weight = torch.ones_like(logprobs)
    if with_tis:
        weight = (batch["old"] - rollout).exp().clamp(max=1.5)
    expected = -batch["advantages"].unsqueeze(-1) * weight / mask.sum()
    torch.testing.assert_close(logprobs.grad[mask], expected[mask], rtol=0, atol=1e-12)
    assert logprobs.grad[~mask].eq(0).all()  # zero, not NaN, despite NaN/-inf padding


def test_tokens_outside_the_clip_band_get_no_gradient_and_count_as_clipped():
    config = GRPOLossConfig(epsilon=0.2, epsilon_high=0.28)
    # Per row: ratio 1.5 with A > 0 (clipped above); ratio 0.5 with A < 0 (clipped below);
    # ratio 0.5 with A > 0 (outside the band but not clipped: min keeps r·A); ratio 1.
    log_ratios = torch.tensor([[math.log(1.5)], [math.log(0.5)], [math.log(0.5)], [0.0]], dtype=torch.float64)
    advantages = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    old = torch.full_like(log_ratios, -1.0)
    logprobs = (old + log_ratios).requires_grad_(True)
    mask = torch.ones_like(log_ratios, dtype=torch.bool)
    loss, metrics = grpo_loss(logprobs, old, advantages, mask, config)
    loss.backward()
    assert logprobs.grad[:2].eq(0).all()
    torch.testing.assert_close(logprobs.grad[2:, 0], torch.tensor([-0.5 / 4, -1.0 / 4], dtype=torch.float64))
    assert metrics["clip_fraction"].item() == pytest.approx(0.5)
    assert metrics["ratio_max"].item() == pytest.approx(1.5)


def test_micro_batch_losses_with_num_tokens_add_up_to_full_batch():
    batch = _random_batch(2, B=8)
    config = GRPOLossConfig(beta=0.1)
    names = ("logprobs", "old", "advantages", "mask", "ref", "rollout")
    full, _ = grpo_loss(*(batch[n] for n in names[:4]), config, batch["ref"], batch["rollout"])
    total_tokens = batch["mask"].sum().item()
    halves = []
    for rows in (slice(0, 3), slice(3, 8)):  # uneven halves: token counts differ
        part = {n: batch[n][rows] for n in names}
        loss, _ = grpo_loss(
            *(part[n] for n in names[:4]), config, part["ref"], part["rollout"], num_tokens=total_tokens
        )
        halves.append(loss)
    assert (halves[0] + halves[1]).item() == pytest.approx(full.item(), abs=1e-12)


def test_masked_mean_and_logprob_gap():
    values = torch.tensor([[1.0, 2.0, math.nan], [4.0, math.inf, -math.inf]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(7 / 3)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0
    learner = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    rollout = torch.tensor([[-1.5, -1.0, math.nan]])
    gap = logprob_gap(learner, rollout, torch.tensor([[True, True, False]]))
    assert gap.item() == pytest.approx(0.75)
    assert not gap.requires_grad


@pytest.mark.parametrize(
    "field, value",
    [("epsilon", -0.1), ("epsilon", 1.0), ("epsilon_high", -0.01), ("beta", -1.0), ("tis_cap", 0.5)],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must"):
        GRPOLossConfig(**{field: value})


def test_beta_without_reference_is_an_error():
    batch = _random_batch(0)
    with pytest.raises(ValueError, match="ref_logprobs_BT"):
        grpo_loss(batch["logprobs"], batch["old"], batch["advantages"], batch["mask"], GRPOLossConfig(beta=0.1))
