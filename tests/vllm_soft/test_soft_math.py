"""The batched soft-step kernels against the one-row reference, the noise, its densities and the cold-stop rules."""

import math

import pytest
import torch
from torch.distributions import Dirichlet, RelaxedOneHotCategorical

from vllm_soft import records, soft_math, stateless_random
from vllm_soft.params import SoftThinkingParams
from reference import predicted_end_step, reference_filter

KNOB_SETS = [
    SoftThinkingParams(),
    SoftThinkingParams(top_k=1),
    SoftThinkingParams(top_k=50, top_p=1.0, min_p=0.0, temperature=1.0),
    SoftThinkingParams(top_k=8, top_p=0.5, min_p=0.0, temperature=2.0),
    SoftThinkingParams(top_k=30, top_p=1.0, min_p=0.2, temperature=0.3),
]


def _batched(logits, knobs):
    return soft_math.filter_distribution(
        logits,
        torch.tensor([k.temperature for k in knobs]),
        torch.tensor([k.top_k for k in knobs]),
        torch.tensor([k.top_p for k in knobs]),
        torch.tensor([k.min_p for k in knobs]),
    )


def test_batched_filter_matches_reference_row_by_row():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(KNOB_SETS) * 4, 1000, generator=generator) * 3
    knobs = KNOB_SETS * 4
    dist = _batched(logits, knobs)
    for row, k in enumerate(knobs):
        expected = reference_filter(logits[row], k)
        kept = dist.kept_BK[row]
        assert dist.token_ids_BK[row][kept].tolist() == expected.token_ids
        torch.testing.assert_close(dist.weights_BK[row][kept], torch.tensor(expected.weights, dtype=torch.float32))
        assert dist.weights_BK[row][~kept].abs().sum() == 0
        assert dist.entropy_B[row].item() == pytest.approx(expected.entropy, rel=1e-4)


def test_each_filter_knob_shrinks_the_support():
    logits = torch.randn(1, 500, generator=torch.Generator().manual_seed(1))
    wide = SoftThinkingParams(top_k=40, top_p=1.0, min_p=0.0, temperature=1.0)
    sizes = {
        name: int(_batched(logits, [knob]).kept_BK.sum())
        for name, knob in {
            "wide": wide,
            "top_k": SoftThinkingParams(top_k=10, top_p=1.0, min_p=0.0, temperature=1.0),
            "top_p": SoftThinkingParams(top_k=40, top_p=0.02, min_p=0.0, temperature=1.0),
            "min_p": SoftThinkingParams(top_k=40, top_p=1.0, min_p=0.8, temperature=1.0),
            "temperature": SoftThinkingParams(top_k=40, top_p=0.5, min_p=0.0, temperature=0.1),
        }.items()
    }
    assert sizes["wide"] == 40
    assert all(sizes[name] < 40 for name in ("top_k", "top_p", "min_p", "temperature")), sizes


def test_masked_tokens_never_enter_the_support():
    logits = torch.full((1, 100), float("-inf"))
    logits[0, [3, 7]] = torch.tensor([1.0, 0.5])
    dist = _batched(logits, [SoftThinkingParams(top_k=10, top_p=1.0, min_p=0.0)])
    assert sorted(dist.token_ids_BK[0][dist.kept_BK[0]].tolist()) == [3, 7]
    assert torch.isfinite(dist.entropy_B).all()


def _noisy(weights: torch.Tensor, noise: str, alpha: float, tau: float, draws: int, seed: int = 0) -> torch.Tensor:
    """``draws`` noisy copies of one row of weights, one per soft step of one seed."""
    rows = weights.expand(draws, -1).double()
    seed_B, step_B = torch.full((draws,), seed), torch.arange(draws)
    if noise == "gumbel":
        return soft_math.gumbel_noise(rows, tau, stateless_random.gumbels(seed_B, step_B, rows.shape[-1]))
    concentration = torch.where(rows > 0, alpha * rows, 1.0)
    return soft_math.dirichlet_noise(rows, stateless_random.gamma_draws(concentration, seed_B, step_B))


@pytest.mark.parametrize("noise", ["dirichlet", "gumbel"])
def test_noise_stays_on_support_sums_to_one_and_changes_weights(noise):
    weights = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0, 0.0])
    draws = _noisy(weights, noise, alpha=1.0, tau=1.0, draws=4000)
    assert draws[:, 4:].abs().sum() == 0
    torch.testing.assert_close(draws.sum(-1), torch.ones(4000, dtype=torch.float64))
    assert (draws >= 0).all()
    assert not torch.isclose(draws, weights.double()).all(-1).any()
    if noise == "dirichlet":  # E[Dirichlet(alpha * w)] = w
        assert torch.allclose(draws.mean(0), weights.double(), atol=0.02)
    else:  # the argmax of a Gumbel-perturbed distribution is a sample from it
        frequencies = torch.bincount(draws.argmax(-1), minlength=6) / len(draws)
        assert torch.allclose(frequencies, weights, atol=0.02)
    torch.testing.assert_close(_noisy(weights, noise, 1.0, 1.0, 4000), draws, rtol=0, atol=0)  # same (seed, step)
    assert not torch.equal(_noisy(weights, noise, 1.0, 1.0, 4000, seed=1), draws)


def test_dirichlet_concentration_controls_spread():
    weights = torch.tensor([0.6, 0.3, 0.1])
    spread = {alpha: _noisy(weights, "dirichlet", alpha, 1.0, 400).std(0).mean() for alpha in (0.5, 100.0)}
    assert spread[100.0] < spread[0.5] / 4


def test_tiny_dirichlet_concentration_does_not_underflow():
    noisy = _noisy(torch.tensor([0.999, 0.001]), "dirichlet", 1e-3, 1.0, 50)
    torch.testing.assert_close(noisy.sum(-1), torch.ones(50, dtype=torch.float64))
    assert torch.isfinite(noisy).all()


def test_sampled_slots_follow_the_weights_and_stay_on_the_support():
    weights = torch.tensor([[0.7, 0.2, 0.1, 0.0]]).expand(6000, -1)
    uniform = stateless_random.uniforms(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 1, 6000)[0]
    slots = soft_math.sample_slots(weights, uniform)
    assert torch.allclose(torch.bincount(slots, minlength=4) / 6000, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.02)
    edge = soft_math.sample_slots(torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([1.0 - 1e-16]))
    assert edge.tolist() == [1]


def test_concept_embedding_and_mixing_modes():
    table = torch.randn(10, 4)
    ids = torch.tensor([[2, 5, 0], [3, 0, 0]])
    weights = torch.tensor([[0.75, 0.25, 0.0], [1.0, 0.0, 0.0]])
    concept = soft_math.concept_embeddings(ids, weights, lambda t: table[t])
    torch.testing.assert_close(concept[0], 0.75 * table[2] + 0.25 * table[5])
    mixed = soft_math.mix_inputs(torch.tensor([False, True]), table[[2, 3]], concept, torch.tensor([0.5, 0.5]))
    assert torch.equal(mixed[0], concept[0])
    torch.testing.assert_close(mixed[1], table[3] + 0.5 * concept[1])


def _transition(**overrides):
    args = dict(
        emitted=5, entropy=1.0, low_entropy_streak=0, soft_steps_done=0, think_end_id=9,
        entropy_threshold=0.1, patience=3, max_soft_steps=None,
    )
    args.update(overrides)
    emitted, streak, end_code = soft_math.thinking_transition(
        torch.tensor([args["emitted"]]), torch.tensor([args["entropy"]]), torch.tensor([args["low_entropy_streak"]]),
        torch.tensor([args["soft_steps_done"]]), torch.tensor([-1 if args["think_end_id"] is None else args["think_end_id"]]),
        torch.tensor([args["entropy_threshold"]]), torch.tensor([args["patience"]]), torch.tensor([args["max_soft_steps"] or 0]),
    )
    return int(emitted), int(streak), records.END_REASONS[int(end_code)]


def test_thinking_transition_rules():
    assert _transition() == (5, 0, None)
    assert _transition(entropy=0.01, low_entropy_streak=1) == (5, 2, None)
    assert _transition(entropy=0.01, low_entropy_streak=2) == (9, 3, "cold_stop")
    assert _transition(entropy=0.01, low_entropy_streak=2, think_end_id=None) == (5, 3, "cold_stop")
    assert _transition(emitted=9) == (9, 0, "think_end")
    assert _transition(soft_steps_done=3, max_soft_steps=4) == (9, 0, "budget")
    assert _transition(soft_steps_done=2, max_soft_steps=4) == (5, 0, None)


def test_reference_predicts_the_same_end_step():
    knobs = SoftThinkingParams(entropy_threshold=0.1, patience=3, think_end_id=9)
    entropies = [1.0, 0.05, 0.05, 1.0, 0.05, 0.05, 0.05, 0.05]
    assert predicted_end_step(entropies, [5] * 8, knobs) == (6, "cold_stop")
    assert predicted_end_step(entropies, [5, 5, 9, 5, 5, 5, 5, 5], knobs) == (2, "think_end")
    assert predicted_end_step([1.0] * 8, [5] * 8, knobs) is None


BASE = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
ALL_VALID = torch.ones(1, 4, dtype=torch.bool)


@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0])
def test_gumbel_softmax_density_equals_torch_relaxed_one_hot_categorical(tau):
    for noisy in _noisy(BASE, "gumbel", 1.0, tau, 5, seed=1):
        expected = RelaxedOneHotCategorical(torch.tensor(tau, dtype=torch.float64), probs=BASE).log_prob(noisy)
        mine = soft_math.concrete_log_density(BASE.log()[None], noisy[None], ALL_VALID, tau)
        torch.testing.assert_close(mine[0], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 20.0])
def test_dirichlet_density_equals_torch_dirichlet(alpha):
    for noisy in _noisy(BASE, "dirichlet", alpha, 1.0, 5, seed=2):
        mine = soft_math.dirichlet_log_density(BASE.log()[None], noisy[None], ALL_VALID, alpha)
        torch.testing.assert_close(mine[0], Dirichlet(alpha * BASE).log_prob(noisy), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("noise", ["none", "gumbel", "dirichlet"])
def test_soft_step_logprob_ignores_padding_and_is_zero_for_a_single_token_support(noise):
    noisy = BASE if noise == "none" else _noisy(BASE, noise, 2.0, 0.5, 1, seed=3)[0]
    emitted = torch.tensor([[False, True, False, False]])
    args = (noise, 2.0, 0.5, "sample")
    whole = soft_math.soft_step_logprob(BASE.log()[None], noisy[None], ALL_VALID, emitted, *args)
    padded = soft_math.soft_step_logprob(
        torch.cat([BASE.log(), torch.tensor([-math.inf])])[None], torch.cat([noisy, torch.zeros(1, dtype=torch.float64)])[None],
        torch.tensor([[True] * 4 + [False]]), torch.cat([emitted, torch.tensor([[False]])], dim=1), *args,
    )
    torch.testing.assert_close(padded, whole)
    if noise == "none":
        torch.testing.assert_close(whole[0], BASE[1].log())
    single = soft_math.soft_step_logprob(
        torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.bool),
        torch.ones(1, 1, dtype=torch.bool), *args,
    )
    assert float(single[0]) == 0.0


def test_noisy_step_logprob_rises_when_the_policy_moves_toward_the_drawn_weights():
    """The gradient of a Gumbel-Softmax step's log-density points toward the drawn mixture."""
    noisy = torch.tensor([[0.05, 0.9, 0.04, 0.01]], dtype=torch.float64)
    logits = BASE.log()[None].clone().requires_grad_(True)
    soft_math.concrete_log_density(torch.log_softmax(logits, -1), noisy, ALL_VALID, 0.5).sum().backward()
    assert int(logits.grad.argmax()) == 1


@pytest.mark.parametrize("vocab", [49152, 151936, 50257, 300])
@pytest.mark.parametrize("k", [1, 10, 15, 64])
def test_block_top_k_is_torch_top_k(vocab, k):
    values = torch.randn(16, vocab, generator=torch.Generator().manual_seed(vocab + k))
    values[0, -3:] = 10.0 + torch.arange(3.0)  # the largest entries in the last, partial block
    top, ids = soft_math.block_top_k(values, k)
    expected_top, expected_ids = values.topk(k, dim=-1, sorted=True)
    assert torch.equal(top, expected_top)
    assert torch.equal(ids, expected_ids)
