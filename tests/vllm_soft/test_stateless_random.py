"""Counter-based randomness: Philox against its published test vectors, uniform and gamma
draws against their distributions, and draws that depend only on (seed, step, slot)."""

import math

import pytest
import torch

from vllm_soft import stateless_random
from vllm_soft.stateless_random import philox4x32_10

M = 0xFFFFFFFF


@pytest.mark.parametrize(
    "counter, key, expected",
    [  # Random123's known-answer tests for philox4x32_10
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((M, M, M, M), (M, M), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ],
)
def test_philox_matches_the_known_answer_vectors(counter, key, expected):
    words = philox4x32_10(tuple(torch.tensor([c]) for c in counter), tuple(torch.tensor([k]) for k in key))
    assert tuple(int(w) for w in words) == expected


def test_uniforms_are_uniform_in_the_open_interval():
    draws = stateless_random.uniforms(torch.arange(4), torch.zeros(4, dtype=torch.long), 0, 50_000).flatten()
    assert 0.0 < float(draws.min()) and float(draws.max()) < 1.0
    assert float(draws.mean()) == pytest.approx(0.5, abs=0.003)
    assert float(draws.var()) == pytest.approx(1 / 12, abs=0.002)
    # Kolmogorov-Smirnov distance to U(0, 1); the 0.1% critical value at n = 200,000 is ~0.0044.
    ordered = draws.sort().values
    grid = torch.arange(1, len(ordered) + 1, dtype=torch.float64) / len(ordered)
    assert float((ordered - grid).abs().max()) < 0.0044
    # Neighbouring draws of a row and the same draw at neighbouring steps are uncorrelated.
    rows = stateless_random.uniforms(torch.zeros(2000, dtype=torch.long), torch.arange(2000), 0, 2)
    for a, b in ((rows[:, 0], rows[:, 1]), (rows[:-1, 0], rows[1:, 0])):
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.08


def test_a_draw_depends_only_on_seed_step_purpose_and_index():
    seeds = torch.tensor([7, 2**40 + 3, -5, 7])
    steps = torch.tensor([0, 11, 3, 12])
    batch = stateless_random.uniforms(seeds, steps, 2, 9)
    for row in range(4):
        alone = stateless_random.uniforms(seeds[row : row + 1], steps[row : row + 1], 2, 9)
        assert torch.equal(alone[0], batch[row])
        assert torch.equal(stateless_random.uniforms(seeds[row : row + 1], steps[row : row + 1], 2, 4)[0], batch[row, :4])
    together = stateless_random.draw(seeds, steps, [(0, 3), (2, 9), (5, 1)])
    assert torch.equal(together[1], batch)  # a lane's draws do not depend on the other lanes
    assert torch.equal(together[0], stateless_random.uniforms(seeds, steps, 0, 3))
    assert not torch.equal(batch[0], batch[3])  # next step
    assert not torch.equal(batch[0], stateless_random.uniforms(seeds[:1], steps[:1], 3, 9)[0])  # other purpose


def test_a_slots_gamma_draw_does_not_depend_on_the_number_of_slots():
    """The batch's widest support sets the slot count; a row's draws must not move with it."""
    seeds, steps = torch.tensor([3, 4]), torch.tensor([0, 9])
    wide = torch.rand(2, 12, dtype=torch.float64) * 3
    assert torch.equal(stateless_random.gamma_draws(wide, seeds, steps)[:, :5], stateless_random.gamma_draws(wide[:, :5], seeds, steps))
    assert torch.equal(stateless_random.gumbels(seeds, steps, 12)[:, :5], stateless_random.gumbels(seeds, steps, 5))


@pytest.mark.parametrize("shape", [0.005, 0.3, 1.0, 4.0, 50.0])
def test_log_gamma_draws_have_the_gamma_moments(shape):
    count = 20_000
    concentration = torch.full((count, 1), shape, dtype=torch.float64)
    draws = stateless_random.gamma_draws(concentration, torch.full((count,), 3), torch.arange(count)).exp().flatten()
    # Gamma(k, 1): mean k, variance k. Standard errors: sqrt(k / n) for the mean, and
    # sqrt((mu4 - k^2) / n) = sqrt((2k^2 + 6k) / n) for the variance; allow 5 of each.
    assert float(draws.mean()) == pytest.approx(shape, abs=5 * math.sqrt(shape / count))
    assert float(draws.var()) == pytest.approx(shape, abs=5 * math.sqrt((2 * shape**2 + 6 * shape) / count))
    if shape < 0.1:  # tiny shapes live in log space: E[log G] = digamma(k) is hugely negative
        logs = stateless_random.gamma_draws(concentration, torch.full((count,), 3), torch.arange(count)).flatten()
        assert float(logs.mean()) == pytest.approx(float(torch.digamma(torch.tensor(shape))), rel=0.05)


def test_request_seeds():
    assert stateless_random.request_seed(5, 0, "a") == 5
    assert stateless_random.request_seed(-1, 0, "a") == 2**64 - 1
    derived = stateless_random.request_seed(None, 0, "req-1")
    assert derived == stateless_random.request_seed(None, 0, "req-1")
    assert derived != stateless_random.request_seed(None, 1, "req-1") != stateless_random.request_seed(None, 0, "req-2")
    assert stateless_random.as_int64(2**64 - 1) == -1 and stateless_random.as_int64(5) == 5
