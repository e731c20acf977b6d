"""pass@k and its error bars: pure functions of per-problem correctness counts.

Unbiased pass@k (Chen et al., 2021, "Evaluating Large Language Models Trained on Code"):
with n samples of a problem of which c are correct, the chance that k of them drawn
without replacement contain a correct one is 1 - C(n - c, k) / C(n, k).
"""

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct out of ``n`` samples (1 <= k <= n)."""
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}] (got {k})")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}] (got {c})")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k) as a product: no huge binomials
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> tuple[float, float]:
    """(mean over problems, its standard error) of pass@k; the standard error is the sample
    standard deviation of the per-problem values over sqrt(number of problems)."""
    if not correct_counts:
        raise ValueError("correct_counts is empty: no problems were evaluated")
    values = [pass_at_k(n, c, k) for c in correct_counts]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))
