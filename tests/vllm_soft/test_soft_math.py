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


def _noisy_log(weights: torch.Tensor, noise: str, alpha: float, tau: float, draws: int, seed: int = 0) -> torch.Tensor:
    """Log-weights of ``draws`` noisy copies of one row of weights, one per soft step of one seed."""
    rows = weights.expand(draws, -1).double()
    seed_B, step_B = torch.full((draws,), seed), torch.arange(draws)
    if noise == "gumbel":
        return soft_math.gumbel_log_weights(rows, tau, stateless_random.gumbels(seed_B, step_B, rows.shape[-1]))
    concentration = torch.where(rows > 0, alpha * rows, 1.0)
    return soft_math.dirichlet_log_weights(rows, stateless_random.gamma_draws(concentration, seed_B, step_B))


def _noisy(weights: torch.Tensor, noise: str, alpha: float, tau: float, draws: int, seed: int = 0) -> torch.Tensor:
    """``_noisy_log``'s weights."""
    return _noisy_log(weights, noise, alpha, tau, draws, seed).exp()


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
        mine = soft_math.concrete_log_density(BASE.log()[None], noisy.log()[None], ALL_VALID, tau)
        torch.testing.assert_close(mine[0], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 20.0])
def test_dirichlet_density_equals_torch_dirichlet(alpha):
    for noisy in _noisy(BASE, "dirichlet", alpha, 1.0, 5, seed=2):
        mine = soft_math.dirichlet_log_density(BASE.log()[None], noisy.log()[None], ALL_VALID, alpha)
        torch.testing.assert_close(mine[0], Dirichlet(alpha * BASE).log_prob(noisy), rtol=1e-9, atol=1e-9)


def _action(rows: int, noise: str = "none", sample: bool = True, multiplex: int = 0, replacement: bool = True,
            token_only: bool = False, ended: bool = False, alpha: float = 2.0, tau: float = 0.5) -> soft_math.ActionKnobs:
    """The same knobs for every one of ``rows`` steps."""
    def full(value, dtype):
        return torch.full((rows,), value, dtype=dtype)

    return soft_math.ActionKnobs(
        noise_B=full(soft_math.NOISE_CODES[noise], torch.long), alpha_B=full(alpha, torch.float64),
        tau_B=full(tau, torch.float64), sample_B=full(sample, torch.bool), multiplex_B=full(multiplex, torch.long),
        replacement_B=full(replacement, torch.bool), token_only_B=full(token_only, torch.bool),
        ended_B=full(ended, torch.bool), noise_kinds=frozenset({noise}), any_multiplex=multiplex > 0,
    )


@pytest.mark.parametrize("noise", ["none", "gumbel", "dirichlet"])
def test_step_logprob_ignores_padding_and_is_zero_for_a_single_token_support(noise):
    log_noisy = BASE.log() if noise == "none" else _noisy_log(BASE, noise, 2.0, 0.5, 1, seed=3)[0]
    emitted = torch.tensor([[False, True, False, False]])
    no_draws = torch.zeros(1, 5, dtype=torch.long)
    whole = soft_math.step_logprob(BASE.log()[None], log_noisy[None], ALL_VALID, emitted, no_draws[:, :4], _action(1, noise))
    minus_inf = torch.tensor([-math.inf], dtype=torch.float64)
    padded = soft_math.step_logprob(
        torch.cat([BASE.log(), minus_inf])[None], torch.cat([log_noisy, minus_inf])[None],
        torch.tensor([[True] * 4 + [False]]), torch.cat([emitted, torch.tensor([[False]])], dim=1), no_draws, _action(1, noise),
    )
    torch.testing.assert_close(padded, whole)
    if noise == "none":
        torch.testing.assert_close(whole[0], BASE[1].log())
    else:  # the density plus the sampled token's log x_y
        density = {"gumbel": soft_math.concrete_log_density, "dirichlet": soft_math.dirichlet_log_density}[noise]
        expected = density(BASE.log()[None], log_noisy[None], ALL_VALID, 0.5 if noise == "gumbel" else 2.0) + log_noisy[1]
        torch.testing.assert_close(whole, expected)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    single = soft_math.step_logprob(zero, zero, torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool),
                                    torch.zeros(1, 1, dtype=torch.long), _action(1, noise))
    assert float(single[0]) == 0.0


@pytest.mark.parametrize("override", [{"token_only": True}, {"ended": True}])
def test_token_action_and_ended_steps_score_the_emitted_token_under_noise(override):
    log_noisy = _noisy_log(BASE, "gumbel", 1.0, 0.5, 1, seed=4)
    emitted = torch.tensor([[False, False, True, False]])
    logprob = soft_math.step_logprob(
        BASE.log()[None], log_noisy, ALL_VALID, emitted, torch.zeros(1, 4, dtype=torch.long), _action(1, "gumbel", **override)
    )
    torch.testing.assert_close(logprob[0], BASE[2].log())


def test_tiny_dirichlet_draws_keep_a_finite_exact_density():
    """(e) Concentrations of 1e-3 make most gamma draws underflow in exp (weights of exactly
    0); their logs stay exact, and the density is Dirichlet's at those logs."""
    base = torch.tensor([0.97, 0.01, 0.01, 0.01], dtype=torch.float64)
    log_noisy = _noisy_log(base, "dirichlet", alpha=0.1, tau=1.0, draws=200, seed=5)
    assert (log_noisy.exp() == 0).any(), "the check needs weights that underflow"
    density = soft_math.dirichlet_log_density(base.log().expand(200, 4), log_noisy, torch.ones(200, 4, dtype=torch.bool), 0.1)
    assert torch.isfinite(density).all()
    concentration = 0.1 * base
    expected = (torch.lgamma(torch.tensor(0.1, dtype=torch.float64)) - torch.lgamma(concentration).sum()
                + ((concentration - 1.0) * log_noisy).sum(-1))
    torch.testing.assert_close(density, expected, rtol=1e-12, atol=1e-9)


def test_gaussian_log_density_is_torch_normal_and_the_draws_are_standard_normal():
    normals = stateless_random.normals(torch.arange(200), torch.zeros(200, dtype=torch.long), 577)
    assert normals.shape == (200, 577)
    assert abs(float(normals.mean())) < 0.01 and abs(float(normals.var()) - 1.0) < 0.01
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    offset = sigma.unsqueeze(-1) * normals[:2]
    expected = torch.distributions.Normal(0.0, sigma.unsqueeze(-1)).log_prob(offset).sum(-1)
    torch.testing.assert_close(soft_math.gaussian_log_density(offset, sigma), expected, rtol=1e-12, atol=1e-9)


def _multiplex(weights: torch.Tensor, rows: int, count: int, replacement: bool, seed: int = 0):
    weights_BK = weights.expand(rows, -1).double()
    seed_B, step_B = torch.full((rows,), seed), torch.arange(rows)
    uniforms, keys = stateless_random.draw(
        seed_B, step_B, [(stateless_random.MULTIPLEX, count), (stateless_random.MULTIPLEX_KEYS, weights.shape[0])]
    )
    return soft_math.multiplex_draws(
        weights_BK, uniforms, stateless_random.gumbel(keys), torch.full((rows,), count), torch.full((rows,), replacement)
    )


def test_multiplex_draws_with_replacement_count_like_a_multinomial():
    weights = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    draws, first = _multiplex(weights, rows=4000, count=4, replacement=True)
    assert (draws.sum(-1) == 4).all() and (draws[:, 4] == 0).all()
    torch.testing.assert_close(draws.double().mean(0), 4 * weights.double(), atol=0.05, rtol=0)
    assert (draws.gather(1, first[:, None]) > 0).all()  # the first draw is among the draws
    first_share = torch.bincount(first, minlength=5).double() / 4000
    torch.testing.assert_close(first_share, weights.double(), atol=0.025, rtol=0)


def test_multiplex_draws_without_replacement_rank_distinct_tokens_like_sequential_draws():
    weights = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    draws, first = _multiplex(weights, rows=4000, count=3, replacement=False)
    assert (torch.sort(draws, dim=-1).values[:, -3:] == torch.tensor([1, 2, 3])).all() and (draws[:, 4] == 0).all()
    assert (draws.gather(1, first[:, None]) == 1).all()
    # P(first = a, second = b) = w_a * w_b / (1 - w_a): sequential draws, renormalised.
    share = float(((draws[:, 0] == 1) & (draws[:, 1] == 2)).double().mean())
    assert abs(share - 0.5 * 0.3 / 0.5) < 0.025, share


def test_multiplex_logprob_is_the_draws_probability():
    log_base = BASE.log()[None]
    counts = torch.tensor([[2, 0, 1, 0]])
    with_replacement = soft_math.multiplex_logprob(log_base, counts, ALL_VALID, torch.tensor([True]))
    torch.testing.assert_close(with_replacement[0], 2 * BASE[0].log() + BASE[2].log())
    ranks = torch.tensor([[2, 0, 1, 3]])  # drew slot 2, then 0, then 3
    without = soft_math.multiplex_logprob(log_base, ranks, ALL_VALID, torch.tensor([False]))
    expected = BASE[2] * BASE[0] / (1 - BASE[2]) * BASE[3] / (1 - BASE[2] - BASE[0])
    torch.testing.assert_close(without[0], expected.log())
    logits = BASE.log()[None].clone().requires_grad_(True)
    soft_math.multiplex_logprob(torch.log_softmax(logits, -1), ranks, ALL_VALID, torch.tensor([False])).sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("uniform", [False, True])
def test_multiplex_mixture_weights_the_drawn_tokens(uniform):
    weights = BASE[None]
    counts = torch.tensor([[2, 0, 1, 0]])
    log_mix = soft_math.multiplex_log_weights(weights, counts, torch.tensor([True]), torch.tensor([uniform]))
    mass = torch.tensor([2.0, 0.0, 1.0, 0.0], dtype=torch.float64) * (1.0 if uniform else BASE)
    torch.testing.assert_close(log_mix.exp()[0], mass / mass.sum())


def test_noisy_step_logprob_rises_when_the_policy_moves_toward_the_drawn_weights():
    """The gradient of a Gumbel-Softmax step's log-density points toward the drawn mixture."""
    noisy = torch.tensor([[0.05, 0.9, 0.04, 0.01]], dtype=torch.float64)
    logits = BASE.log()[None].clone().requires_grad_(True)
    soft_math.concrete_log_density(torch.log_softmax(logits, -1), noisy.log(), ALL_VALID, 0.5).sum().backward()
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
