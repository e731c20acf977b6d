"""The reasoning-pays benchmark's bookkeeping: paired contrasts per task (thinking vs answering
directly, SCM vs greedy) and its table. Pure functions, no engine."""

import pytest

from benchmarks.reasoning_pays import markdown, summarize


def records(correct: int, length: int, total: int = 10) -> list[dict]:
    """``total`` problems, the first ``correct`` right, every answer ``length`` tokens."""
    return [{"problem": i, "correct": i < correct, "length": length, "soft_steps": 0} for i in range(total)]


def test_contrasts_are_paired_per_task_and_cells_keep_their_answer_shape():
    table = {("train", "2d2t", "greedy"): records(6, 60), ("direct", "2d2t", "greedy"): records(2, 3),
             ("train", "2d2t", "scm"): records(7, 55), ("neutral", "2d2t", "greedy"): records(3, 40),
             ("neutral", "2d2t", "scm"): records(3, 40),
             ("train", "1d2t", "greedy"): records(2, 70), ("direct", "1d2t", "greedy"): records(3, 3)}
    summary = summarize(table, ["1d2t", "2d2t"])
    contrasts = {(c["task"], c["contrast"]): c for c in summary["contrasts"]}
    assert contrasts["2d2t", "think minus direct answer, greedy"]["difference"] == pytest.approx(0.4)
    assert contrasts["1d2t", "think minus direct answer, greedy"]["difference"] == pytest.approx(-0.1)
    assert contrasts["2d2t", "training prompt minus neutral prompt, greedy"]["difference"] == pytest.approx(0.3)
    assert contrasts["2d2t", "SCM minus greedy, training prompt"]["difference"] == pytest.approx(0.1)
    assert contrasts["2d2t", "SCM minus greedy, neutral prompt"]["difference"] == pytest.approx(0.0)
    assert contrasts["2d2t", "SCM thinking minus direct answer"]["difference"] == pytest.approx(0.5)
    # 1d2t has no SCM or neutral cells: only the contrasts both of whose cells exist
    assert ("1d2t", "SCM minus greedy, neutral prompt") not in contrasts
    assert ("1d2t", "training prompt minus neutral prompt, greedy") not in contrasts
    # 4 of 10 flips (0 -> 1), none the other way: SE of the paired mean is sd / sqrt(10)
    assert contrasts["2d2t", "think minus direct answer, greedy"]["se"] == pytest.approx((0.4 * 0.6 * 10 / 9) ** 0.5 / 10 ** 0.5)
    cells = {(c["format"], c["task"], c["mode"]): c for c in summary["cells"]}
    assert cells["direct", "2d2t", "greedy"]["direct_share"] == 1.0
    assert cells["train", "2d2t", "greedy"]["direct_share"] == 0.0
    assert cells["train", "2d2t", "greedy"]["accuracy"] == pytest.approx(0.6)


def test_the_table_gives_every_cell_and_every_contrast_in_points():
    table = {("train", "2d2t", "greedy"): records(6, 60), ("direct", "2d2t", "greedy"): records(2, 3)}
    text = markdown(summarize(table, ["2d2t"]))
    assert "| 2d2t | train | greedy | 60.0 | 60 | 0 |" in text
    assert "| 2d2t | direct | greedy | 20.0 | 3 | 100 | 20.0 / " in text
    assert "| 2d2t | think minus direct answer, greedy | +40.0 ± " in text
