"""The soft-RL arms benchmark's bookkeeping: run labels (arm and seed), the bar against token
GRPO of the same seed, and the spread of gains across seeds. Pure functions, no engine."""

import math

import pytest

from benchmarks.soft_rl_arms import (DIRECT_ANSWER_TOKENS, answer_shape, arm_of, markdown, reward_difference, run_label,
                                     seed_of, summarize)


@pytest.mark.parametrize("label, arm, seed", [("scm", "scm", 0), ("scm_s1", "scm", 1), ("gate_fast", "gate_fast", 0),
                                              ("gate_fast_s12", "gate_fast", 12), ("base", "base", 0)])
def test_a_run_label_names_its_arm_and_seed(label, arm, seed):
    assert (arm_of(label), seed_of(label)) == (arm, seed)
    assert arm == "base" or run_label(arm, seed) == label


@pytest.mark.parametrize("label", ["scm_s0", "scm_s01", "scm_sx", "nope_s1"])
def test_labels_that_name_no_other_seed_are_not_runs(label):
    assert arm_of(label) == label  # so main() rejects them as --arms


def cells(**accuracy_by_model: float) -> dict:
    """(format, model, mode) -> 10 problems' correctness, the first round(10 * acc) correct."""
    return {(fmt, model, mode): [i < round(10 * acc) for i in range(10)]
            for model, acc in accuracy_by_model.items() for fmt in ("train", "neutral") for mode in ("greedy", "scm")}


def test_each_seed_is_compared_with_token_grpo_of_its_own_seed_and_the_spread_is_reported():
    results = cells(base=0.2, grpo=0.6, scm=0.5, grpo_s1=0.4, scm_s1=0.5)
    labels = ["grpo", "scm", "grpo_s1", "scm_s1"]
    summary = summarize(results, labels, rewards={}, shares={})
    rows = {(r["format"], r["model"], r["mode"]): r for r in summary["rows"]}
    assert rows["neutral", "scm", "scm"]["vs_grpo"] == pytest.approx(-0.1)
    assert rows["neutral", "scm_s1", "scm"]["vs_grpo"] == pytest.approx(0.1)
    assert "vs_grpo" not in rows["train", "grpo_s1", "greedy"]
    verdicts = summary["verdicts"]
    assert set(verdicts) == {"scm", "scm_s1"}
    assert verdicts["scm"]["greedy_gain_minus_grpo"] == pytest.approx(-0.1)
    assert verdicts["scm_s1"]["greedy_gain_minus_grpo"] == pytest.approx(0.1)
    assert verdicts["scm_s1"]["passes"] == "yes" and verdicts["scm"]["passes"] == "no"
    spread = {(s["format"], s["mode"], s["arm"]): s for s in summary["seeds"]}
    grpo = spread["train", "greedy", "grpo"]
    assert grpo["gains"] == {0: pytest.approx(0.4), 1: pytest.approx(0.2)}
    assert grpo["mean"] == pytest.approx(0.3) and grpo["sd"] == pytest.approx(math.sqrt(0.02))
    assert spread["neutral", "scm", "scm"]["sd"] == pytest.approx(0.0)
    # over the two seeds: SCM is on par with token GRPO (-0.1, +0.1), so the bar fails on the mean
    [over_seeds] = summary["bar_over_seeds"]
    assert over_seeds["arm"] == "scm" and over_seeds["seeds"] == [0, 1]
    neutral = over_seeds["neutral_vs_grpo"]
    assert neutral["per_seed"] == {0: pytest.approx(-0.1), 1: pytest.approx(0.1)}
    assert neutral["mean"] == pytest.approx(0.0) and neutral["se"] == pytest.approx(0.1)
    assert over_seeds["own_gain"]["mean"] == pytest.approx(0.3)
    assert over_seeds["checks"] == {"own_gain": True, "neutral_vs_grpo": False, "greedy_gain": True}
    assert over_seeds["passes"] == "no"


def test_the_bar_over_seeds_is_unknown_where_a_seed_lacks_a_cell():
    results = cells(base=0.2, grpo=0.4, scm=0.6, grpo_s1=0.4, scm_s1=0.6)
    del results["neutral", "scm_s1", "scm"]
    [over_seeds] = summarize(results, ["grpo", "scm", "grpo_s1", "scm_s1"], rewards={}, shares={})["bar_over_seeds"]
    assert over_seeds["neutral_vs_grpo"]["mean"] is None
    assert over_seeds["checks"] == {"own_gain": True, "neutral_vs_grpo": None, "greedy_gain": True}
    assert over_seeds["passes"] == "unknown"


def test_a_run_without_token_grpo_of_its_seed_gets_no_verdict():
    summary = summarize(cells(base=0.2, grpo=0.6, scm_s1=0.5), ["grpo", "scm_s1"], rewards={}, shares={})
    assert summary["verdicts"] == {} and summary["seeds"] == []


def test_training_rewards_are_compared_step_by_step_with_token_grpo_of_the_same_seed():
    # the steps' prompts move both runs alike: paired, a steady +0.01 has no spread at all
    grpo = [0.1, 0.4, 0.2, 0.3]
    rewards = {"grpo": grpo, "gate": [r + 0.01 for r in grpo], "gaussian": [0.0, 0.2]}
    assert reward_difference(rewards, "gate", "grpo") == (pytest.approx(0.01), pytest.approx(0.0, abs=1e-12))
    mean, se = reward_difference(rewards, "gaussian", "grpo")  # over the steps both ran
    assert mean == pytest.approx(-0.15) and se == pytest.approx(0.05)
    assert reward_difference(rewards, "grpo", "grpo") is None and reward_difference(rewards, "gate_s1", "grpo_s1") is None
    cells_ = {(fmt, model, mode): [True] * 5 + [False] * 5 for model in ("base", "grpo", "gate")
              for fmt in ("train", "neutral") for mode in ("greedy", "gate")}
    verdict = summarize(cells_, ["grpo", "gate"], rewards, {"gate": (0.07, 0.08)})["verdicts"]["gate"]
    assert verdict["checks"] == {"own_gain": False, "reward": True, "hidden_share_rises": True}


def record(length: int, correct: bool, soft_steps: int = 0) -> dict:
    return {"length": length, "correct": correct, "soft_steps": soft_steps}


def test_answer_shape_splits_direct_answers_from_worked_ones():
    rows = [record(DIRECT_ANSWER_TOKENS, True, 10), record(8, False, 4), record(DIRECT_ANSWER_TOKENS + 1, True, 17),
            record(60, False, 40)]
    shape = answer_shape(rows)
    assert shape["mean_length"] == pytest.approx((16 + 8 + 17 + 60) / 4)
    assert shape["mean_soft_steps"] == pytest.approx((10 + 4 + 17 + 40) / 4)
    assert shape["direct_share"] == 0.5  # the boundary length counts as direct
    assert (shape["direct_accuracy"], shape["longer_accuracy"]) == (0.5, 0.5)
    assert answer_shape([record(40, True)])["direct_accuracy"] is None  # none direct: unknown, not 0


def test_each_row_carries_its_answer_shape_into_the_table():
    results = cells(base=0.2, grpo=0.6)
    shapes = {key: answer_shape([record(10, c) for c in correct]) for key, correct in results.items()}
    summary = summarize(results, ["grpo"], rewards={}, shares={}, shapes=shapes)
    row = next(r for r in summary["rows"] if (r["format"], r["model"], r["mode"]) == ("train", "grpo", "greedy"))
    assert (row["direct_share"], row["direct_accuracy"], row["longer_accuracy"]) == (1.0, 0.6, None)
    assert "| train | greedy | grpo | 60.0 | +40.0 ± 16.3 |  | 10.0 (0.0) | 100.0 | 60.0 / - |" in markdown(summary, {})


def test_a_task_and_a_response_prefix_move_every_arm_and_the_defaults_change_nothing():
    from benchmarks.soft_rl_arms import ARMS, REPO, TASKS, results_folder, task_overrides
    from rollout.config import load_config
    from trainer.settings import TrainConfig

    assert task_overrides("1d2t", None) == []
    for config in ARMS.values():
        moved = load_config(TrainConfig, REPO / config, task_overrides("2d3t", 128))
        assert moved.prompts.args == TASKS["2d3t"] and moved.algorithm.max_tokens == 128
        assert load_config(TrainConfig, REPO / config, []).prompts.args == TASKS["1d2t"]
        prefixed = load_config(TrainConfig, REPO / config, task_overrides("1d2t", None, "To calculate: 3"))
        assert prefixed.format.response_prefix == "To calculate: 3" and prefixed.prompts.args == TASKS["1d2t"]
    assert results_folder("1d2t", "") == "soft_rl_arms"
    assert results_folder("2d2t", "To calculate") == "soft_rl_arms_2d2t_prefixed"
