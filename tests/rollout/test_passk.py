"""pass@k against brute-force enumeration of every k-subset of the n samples."""

import itertools
import math

import pytest

from rollout.eval.passk import mean_pass_at_k, pass_at_k


def brute_force_pass_at_k(outcomes: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(range(len(outcomes)), k))
    return sum(any(outcomes[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 4, 7, 10])
def test_pass_at_k_equals_enumeration_of_all_subsets(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(outcomes, k), abs=1e-12)


def test_pass_at_1_is_the_fraction_correct_and_large_n_is_stable():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    assert pass_at_k(1000, 0, 999) == 0.0


def test_mean_and_standard_error_by_hand():
    mean, error = mean_pass_at_k([0, 4, 2, 2], n=4, k=1)  # per problem: 0, 1, .5, .5
    assert mean == pytest.approx(0.5)
    assert error == pytest.approx(math.sqrt((0.25 + 0.25 + 0 + 0) / 3 / 4))
    assert mean_pass_at_k([3], n=4, k=1) == (0.75, 0.0)


@pytest.mark.parametrize("n, c, k", [(4, 1, 0), (4, 1, 5), (4, 5, 1), (4, -1, 1)])
def test_bad_arguments_name_the_allowed_range(n, c, k):
    with pytest.raises(ValueError, match=r"must be in \["):
        pass_at_k(n, c, k)
