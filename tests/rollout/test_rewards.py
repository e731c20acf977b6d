"""Rewards: answer extraction and equivalence, the format check, reward specs, and the
scorer's time limits against checks that hang, raise or kill their worker.

The misbehaving checks below are module-level functions: the scorer's spawned worker
imports them from this module by name.
"""

import math
import multiprocessing
import os
import time

import pytest

from rollout.rewards import (
    CHECKS,
    RewardSpec,
    Scorer,
    answer_correct,
    choice_correct,
    extract_answer,
    format_reward,
    register_check,
)

GOOD = "<think>2 + 5 = 7</think>\n<answer>7</answer>"


def _spin(response, answer, entry):
    while True:
        pass


def _sleep(response, answer, entry):
    time.sleep(1000)


def _hang_on_request(response, answer, entry):
    if response == "hang":
        while True:
            pass
    return 1.0


def _raise(response, answer, entry):
    raise RuntimeError("verifier bug")


def _nan(response, answer, entry):
    return math.nan


def _exit(response, answer, entry):
    os._exit(3)


for _check in (_spin, _sleep, _hang_on_request, _raise, _nan, _exit):
    register_check(f"test{_check.__name__}", _check)


@pytest.fixture(scope="module")
def scorer():
    # No preload: these tests do not use reasoning-gym, and restarts stay fast.
    with Scorer(preload=()) as scorer:
        scorer.score("warm up", None, None, RewardSpec({"format": 1.0}))
        yield scorer


def _workers() -> set:
    return {p.pid for p in multiprocessing.active_children() if p.name == "reward-scorer"}


@pytest.mark.parametrize(
    "response, expected",
    [
        ("so <answer>3</answer> no, <answer> 7 </answer>", "7"),
        (r"thus \boxed{\frac{1}{\sqrt{2}}} and", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{1} then \boxed{\frac{1}{", None),
        ("12 apples, 1,000 pears.", "1,000"),
        ("it is −3", "−3"),
        ("no digits here", None),
        ("<answer></answer>", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "response, answer",
    [
        (r"\boxed{1/2}", "0.5"),
        ("1,000", "1000"),
        ("The total is 1,000.", "1000"),
        ("−3", "-3"),
        ("<answer>7</answer>", "7"),
        (r"<answer>$\frac{1}{2}$</answer>", "0.5"),
        (r"\boxed{\dfrac{\sqrt{3}}{2}}", r"\frac{\sqrt 3}{2}"),
        ("<answer>x = 3/4</answer>", "0.75"),
        ("<answer>0.3333333</answer>", "1/3"),
        (r"<answer>\{1, 2\}</answer>", r"\{2, 1\}"),
        ("<answer>72</answer>", "Natalia sold 48/2 = 24 clips in May.\n#### 72"),  # GSM8K's format
    ],
)
def test_equivalent_answers_are_correct(response, answer):
    assert answer_correct(response, answer) == 1.0


@pytest.mark.parametrize(
    "response, answer",
    [
        ("<answer>8</answer>", "7"),
        ("I am not sure.", "7"),
        ("-3", "3"),
        ("<answer>0.33</answer>", "1/3"),
        (r"\boxed{\frac{1}{", "1/2"),
        (r"<answer>\frac{1}{</answer>", "1/2"),
        (r"<answer>\sqrt{2}</answer>", "2"),  # math_verify alone would read bare \sqrt 2 as 2
        (r"<answer>3\pi</answer>", "3"),
    ],
)
def test_wrong_missing_or_malformed_answers_score_zero(response, answer):
    assert answer_correct(response, answer) == 0.0


@pytest.mark.parametrize(
    "response, expected",
    [
        (GOOD, 1.0),
        ("  <think>\na\n</think>  <answer>b</answer>\n", 1.0),
        ("<answer>7</answer>", 0.0),
        ("<answer>7</answer><think>x</think>", 0.0),
        ("<think>x</think><answer>7</answer><answer>8</answer>", 0.0),
        ("<think>x</think>then<answer>7</answer>", 0.0),
        ("<think>x</think><answer>7</answer> trailing", 0.0),
    ],
)
def test_format_reward(response, expected):
    assert format_reward(response) == expected


@pytest.mark.parametrize(
    "response, letter, expected",
    [
        ("<think>x</think><answer>C</answer>", "C", 1.0),
        ("<answer>(c)</answer>", "C", 1.0),
        ("<answer>C) 42 m/s</answer>", "C", 1.0),
        ("so \\boxed{B}", "B", 1.0),
        ("The answer is (D).", "D", 1.0),
        ("ANSWER: B", "B", 1.0),
        ("<answer>B</answer>", "C", 0.0),
        ("<answer>Carbon</answer>", "C", 0.0),  # a word starting with the letter is not a pick
        ("the answer is a bit unclear", "A", 0.0),  # lower-case "a" is an article, not option A
        ("<answer>A</answer> on second thought the answer is B", "B", 0.0),  # the tag is final
        ("\\boxed{B and the answer is B", "B", 0.0),  # an unclosed box is no answer, as for numbers
        ("no letter at all", "A", 0.0),
    ],
)
def test_choice_correct(response, letter, expected):
    assert choice_correct(response, letter) == expected


def test_format_reward_tag_names():
    response = "<reasoning>x</reasoning><final>7</final>"
    assert format_reward(response, think_tag="reasoning", answer_tag="final") == 1.0
    assert format_reward(response) == 0.0


def test_spec_rejects_unknown_terms_and_bad_weights():
    with pytest.raises(ValueError, match=r"unknown reward term 'corect'.*'correct'.*'format'"):
        RewardSpec({"corect": 1.0})
    for weight in (math.nan, math.inf, "1", True, None):
        with pytest.raises(ValueError, match="weight of reward term 'format'"):
            RewardSpec({"format": weight})
    with pytest.raises(ValueError, match="at least one"):
        RewardSpec({})


def test_register_check_needs_an_importable_function():
    with pytest.raises(ValueError, match="module-level function"):
        register_check("test_lambda", lambda response, answer, entry: 1.0)
    with pytest.raises(ValueError, match="already registered"):
        register_check("format", _raise)
    assert "test_lambda" not in CHECKS


def test_score_weights_the_parts(scorer):
    result = scorer.score(GOOD, "7", None, RewardSpec({"correct": 1.0, "format": 0.25}))
    assert result.parts == {"correct": 1.0, "format": 1.0}
    assert result.total == pytest.approx(1.25)
    assert (result.errors, result.timeouts) == (0, 0)

    result = scorer.score("<answer>8</answer>", "7", None, RewardSpec({"correct": 1.0, "format": 0.25}))
    assert result.parts == {"correct": 0.0, "format": 0.0}
    assert result.total == 0.0


@pytest.mark.parametrize("check", ["test_spin", "test_sleep"])
def test_hanging_check_is_stopped_at_the_time_limit(scorer, check):
    before = _workers()
    spec = RewardSpec({check: 1.0})
    start = time.monotonic()
    result = scorer.score(GOOD, "7", None, spec, timeout_s=0.5)
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 2.5
    assert (result.total, result.parts, result.timeouts, result.errors) == (0.0, {check: 0.0}, 1, 0)
    after = _workers()
    assert len(before - after) == 1 and after < before  # killed and reaped

    # The scorer keeps working, in a fresh worker.
    result = scorer.score(GOOD, "7", None, RewardSpec({"correct": 1.0}), timeout_s=0.5)
    assert (result.total, result.timeouts, result.errors) == (1.0, 0, 0)
    assert len(_workers() - after) == 1


def test_only_the_hanging_item_of_a_batch_scores_zero(scorer):
    items = [(GOOD, "7", None), ("hang", "7", None), (GOOD, "8", None)]
    spec = RewardSpec({"test_hang_on_request": 1.0, "correct": 2.0})
    results = scorer.score_batch(items, spec, timeout_s=0.5)
    assert [r.parts for r in results] == [
        {"test_hang_on_request": 1.0, "correct": 1.0},
        {"test_hang_on_request": 0.0, "correct": 0.0},
        {"test_hang_on_request": 1.0, "correct": 0.0},
    ]
    assert [r.total for r in results] == [3.0, 0.0, 1.0]
    assert [(r.timeouts, r.errors) for r in results] == [(0, 0), (1, 0), (0, 0)]


def test_failing_checks_are_counted_as_errors(scorer):
    workers = _workers()
    spec = RewardSpec({"test_raise": 1.0, "test_nan": 1.0, "format": 0.5, "correct": 1.0})
    results = scorer.score_batch([(GOOD, "7", None), (GOOD, None, None)], spec)
    assert results[0].parts == {"test_raise": 0.0, "test_nan": 0.0, "format": 1.0, "correct": 1.0}
    assert (results[0].total, results[0].errors, results[0].timeouts) == (1.5, 2, 0)
    # "correct" without a reference answer is an error too, not a silent 0.
    assert (results[1].total, results[1].errors) == (0.5, 3)
    assert _workers() == workers  # an exception does not cost a worker


def test_a_check_that_kills_the_worker_is_an_error(scorer):
    before = _workers()
    result = scorer.score(GOOD, "7", None, RewardSpec({"test_exit": 1.0, "format": 1.0}))
    # The check after the crash still ran, in a fresh worker.
    assert (result.parts, result.errors, result.timeouts) == ({"test_exit": 0.0, "format": 1.0}, 1, 0)
    after = _workers()
    assert len(before - after) == 1 and len(after - before) == 1


def test_bad_timeout_is_rejected(scorer):
    for timeout_s in (0, -1.0, math.inf, "5"):
        with pytest.raises(ValueError, match="timeout_s"):
            scorer.score(GOOD, "7", None, RewardSpec(), timeout_s=timeout_s)


def test_no_worker_outlives_its_scorer():
    before = _workers()
    with Scorer(preload=()) as scorer:
        assert scorer.score_batch([], RewardSpec()) == []
        assert _workers() == before  # started lazily
        assert scorer.score(GOOD, "7", None, RewardSpec()).total == 1.0
        (worker,) = _workers() - before
    assert _workers() == before
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


def test_worker_that_cannot_start_is_an_error_not_a_zero_reward():
    before = _workers()
    with Scorer(preload=("no_such_module_for_the_reward_worker",)) as scorer:
        with pytest.raises(RuntimeError, match="did not start.*no_such_module_for_the_reward_worker"):
            scorer.score(GOOD, "7", None, RewardSpec())
        assert _workers() == before
