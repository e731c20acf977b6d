"""Rewards: named checks, weighted by a spec, run in a worker process under a time limit.

    RewardSpec({"correct": 1.0, "format": 0.1})      names -> checks (CHECKS; register_check)
        │
    Scorer.score_batch(items, spec) ──one message──► worker process (spawned, persistent)
        ▲                                              for each (item, check): run the
        │   one reply per (item, check), in order ◄──  check, send its score or its error
        │   no reply within timeout_s: the check scores 0 and counts as a timeout; kill
        │   the worker, start a fresh one, send it the checks not yet done
        ▼
    RewardResult(total, parts, errors, timeouts), one per item

A check is a module-level function ``check(response, answer, entry) -> float`` (``answer``:
the reference answer or None; ``entry``: the reasoning-gym entry or None). The worker
imports checks by name, so a check must live in an importable module. A check that raises
or returns a non-finite number scores 0 and counts as an error; nothing here raises on a
bad response.
"""

import contextlib
import functools
import importlib
import logging
import math
import multiprocessing
import pickle
import re
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from math_verify import parse, verify

logger = logging.getLogger(__name__)

Check = Callable[[str, str | None, dict | None], float]
RewardInput = tuple[str, str | None, dict | None]
"""(response, reference answer, reasoning-gym entry) of one sample."""

DEFAULT_TIMEOUT_S = 5.0
WORKER_START_TIMEOUT_S = 120.0
DEFAULT_PRELOAD = ("reasoning_gym",)
"""Modules the worker imports before it takes work, so that their import time (~2 s for
reasoning_gym) does not count against a check's time limit."""
NUMERIC_TOLERANCE = 1e-6

# math_verify's own time limits use signal.alarm, which raises ValueError off the main
# thread; we turn them off (the Scorer enforces time limits) and drop the notice that
# math_verify logs once per process about it.
for _logger_name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger_name).addFilter(
        lambda record: not record.getMessage().startswith("Timeout is disabled")
    )

# ---------------------------------------------------------------------------- answers

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = "\\boxed{"
_NUMBER = re.compile(r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def extract_answer(response: str) -> str | None:
    """The model's final answer: the content of the last ``<answer>`` tag, else of the last
    ``\\boxed{...}``, else the last number; None if there is none or that box is unclosed."""
    marked, answer = _marked_answer(response)
    if marked:
        return answer
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def _marked_answer(response: str) -> tuple[bool, str | None]:
    """Whether ``response`` marks its final answer (an ``<answer>`` tag or a ``\\boxed{``),
    and the content of the last mark (None if it is empty or the box is unclosed)."""
    tagged = _ANSWER_TAG.findall(response)
    if tagged:
        return True, tagged[-1].strip() or None
    start = response.rfind(_BOXED)
    if start >= 0:
        return True, _braced(response, start + len(_BOXED))
    return False, None


def _braced(text: str, start: int) -> str | None:
    """Text from ``start`` to the brace closing the one just before it; None if unclosed."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip() or None
    return None


def _normalise(answer: str) -> str:
    """Drop ``$``, thousands separators and a trailing period; unicode minus -> ``-``."""
    answer = answer.replace("\u2212", "-").replace("$", "")
    return _THOUSANDS_COMMA.sub("", answer).strip().rstrip(".").strip()


def _as_number(answer: str) -> Fraction | None:
    """``answer`` as an exact number if it is a plain integer, decimal or fraction."""
    try:
        return Fraction(re.sub(r"\s+", "", answer))
    except (ValueError, ZeroDivisionError):
        return None


def answer_correct(response: str, answer: str) -> float:
    """1.0 if the final answer in ``response`` equals the reference ``answer``, else 0.0.

    Plain numbers compare exactly (within 1e-6, so ``1/2`` equals ``0.5``); anything else
    goes through math_verify (LaTeX, expressions, sets)."""
    predicted = extract_answer(response)
    if predicted is None:
        return 0.0
    if "####" in answer:  # GSM8K's published format: reasoning, then "#### 42"
        answer = answer.rsplit("####", 1)[1]
    predicted, reference = _normalise(predicted), _normalise(answer)
    if not predicted or not reference:
        return 0.0
    if predicted == reference:
        return 1.0
    predicted_number, reference_number = _as_number(predicted), _as_number(reference)
    if predicted_number is not None and reference_number is not None:
        return float(abs(predicted_number - reference_number) <= NUMERIC_TOLERANCE)
    # Wrapped in $...$: on bare text math_verify falls back to the last plain number it
    # finds (``\\sqrt 2`` parses as 2, ``3\\pi`` as 3).
    gold = parse(f"${reference}$", parsing_timeout=None)
    target = parse(f"${predicted}$", parsing_timeout=None)
    return float(verify(gold, target, timeout_seconds=None))


_CHOICE_LETTER = re.compile(r"\(?([A-Za-z])\)?(?:[.):\s]|$)")
_CHOICE_STATED = re.compile(r"\b(?i:answer|option)\s*(?i:is|:)?\s*\(?([A-Z])\)?(?![A-Za-z])")


def choice_correct(response: str, letter: str) -> float:
    """1.0 if ``response`` picks option ``letter`` of a multiple-choice question: the last
    ``<answer>`` or ``\\boxed{}`` holds ``C``, ``(C)`` or ``C) text``; without either,
    the last "answer is C" / "option (C)" counts."""
    marked, final = _marked_answer(response)
    if marked:
        match = _CHOICE_LETTER.match(final) if final is not None else None
        picked = match.group(1) if match else None
    else:
        stated = _CHOICE_STATED.findall(response)
        picked = stated[-1] if stated else None
    return float(picked is not None and picked.upper() == letter.strip().upper())


def format_reward(response: str, think_tag: str = "think", answer_tag: str = "answer") -> float:
    """1.0 if ``response`` is ``<think>...</think>`` then ``<answer>...</answer>`` (one of
    each, in that order, whitespace allowed around them), else 0.0."""
    tags = [f"<{think_tag}>", f"</{think_tag}>", f"<{answer_tag}>", f"</{answer_tag}>"]
    if any(response.count(tag) != 1 for tag in tags):
        return 0.0
    pattern = r"\s*{}.*{}\s*{}.*{}\s*".format(*map(re.escape, tags))
    return float(re.fullmatch(pattern, response, re.DOTALL) is not None)


def reasoning_gym_score(response: str, entry: dict) -> float:
    """Score the final answer in ``response`` with the scorer of the entry's reasoning-gym
    dataset (its own rules: some give partial credit)."""
    predicted = extract_answer(response)
    if predicted is None:
        return 0.0
    score_answer = _reasoning_gym_scorer(entry["metadata"]["source_dataset"])
    return float(score_answer(predicted, entry))


@functools.cache
def _reasoning_gym_scorer(dataset_name: str) -> Callable[[str, dict], float]:
    # Imported here: reasoning_gym takes ~2 s to import and only this check needs it.
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(dataset_name)


# ----------------------------------------------------------------------------- checks


def _correct(response: str, answer: str | None, entry: dict | None) -> float:
    if answer is None:
        raise ValueError("the 'correct' check needs a reference answer")
    return answer_correct(response, answer)


def _format(response: str, answer: str | None, entry: dict | None) -> float:
    return format_reward(response)


def _choice(response: str, answer: str | None, entry: dict | None) -> float:
    if answer is None:
        raise ValueError("the 'choice' check needs the letter of the correct option")
    return choice_correct(response, answer)


def _reasoning_gym(response: str, answer: str | None, entry: dict | None) -> float:
    if entry is None:
        raise ValueError("the 'reasoning_gym' check needs a reasoning-gym entry")
    return reasoning_gym_score(response, entry)


BREVITY_SCALE_CHARS = 1000


def _brevity(response: str, answer: str | None, entry: dict | None) -> float:
    """A mild length penalty, 1 - characters / 1000 (at least 0): a tie-breaker between
    equally correct answers, and a signal even a random model gets (smoke runs)."""
    return max(0.0, 1.0 - len(response) / BREVITY_SCALE_CHARS)


CHECKS: dict[str, Check] = {
    "correct": _correct, "choice": _choice, "format": _format, "reasoning_gym": _reasoning_gym,
    "brevity": _brevity,
}
"""Checks by name; reward specs refer to these names."""


def register_check(name: str, check: Check) -> None:
    """Make ``check`` usable in reward specs as ``name`` (again with the same check: no-op)."""
    if CHECKS.get(name, check) is not check:
        raise ValueError(f"a different check is already registered as {name!r}")
    try:
        pickle.dumps(check)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise ValueError(
            f"check {name!r} must be a module-level function, so that the scoring worker "
            f"can import it ({e})"
        ) from e
    CHECKS[name] = check


@dataclass
class RewardSpec:
    """Which checks make up the reward, and their weights."""

    terms: dict[str, float] = field(default_factory=lambda: {"correct": 1.0})
    """Weight of each check by name; the total reward is the weighted sum of the scores."""

    def __post_init__(self):
        if not self.terms:
            raise ValueError(f"terms must name at least one check; valid names: {sorted(CHECKS)}")
        for name, weight in self.terms.items():
            if name not in CHECKS:
                raise ValueError(f"unknown reward term {name!r}; valid names: {sorted(CHECKS)}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"weight of reward term {name!r} must be a number (got {weight!r})")
            if not math.isfinite(weight):
                raise ValueError(f"weight of reward term {name!r} must be finite (got {weight!r})")


@dataclass
class RewardResult:
    """The reward of one sample."""

    total: float = 0.0
    """Weighted sum of ``parts``."""
    parts: dict[str, float] = field(default_factory=dict)
    """Unweighted score of each check; 0 for a check that failed or timed out."""
    errors: int = 0
    """Checks that raised, returned a non-finite score, or killed the worker."""
    timeouts: int = 0
    """Checks stopped at the time limit."""


# ----------------------------------------------------------------------------- scorer

_OK, _ERROR, _TIMEOUT = "ok", "error", "timeout"
_READY = "ready"


def _run_check(check: Check, response: str, answer: str | None, entry: dict | None):
    """(status, score or error message) of one check."""
    try:
        value = float(check(response, answer, entry))
    except Exception as e:  # a failing check scores 0 and is counted; the batch goes on
        return _ERROR, f"{type(e).__name__}: {e}"
    if not math.isfinite(value):
        return _ERROR, f"non-finite score {value}"
    return _OK, value


def _worker_main(conn, preload: tuple[str, ...]) -> None:
    """Worker process: run (item, check) tasks and send one outcome per task, in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    for module in preload:
        importlib.import_module(module)
    conn.send(_READY)
    while True:
        try:
            items, checks, tasks = conn.recv()
        except EOFError:  # the parent closed the pipe or died
            return
        for index, name in tasks:
            conn.send(_run_check(checks[name], *items[index]))


class Scorer:
    """Scores batches in one persistent worker process, with a time limit on every check.

    The worker is spawned on first use and replaced when a check hangs or kills it;
    ``close()`` (or leaving a ``with`` block) stops it. Thread-safe: batches take turns."""

    def __init__(self, preload: Sequence[str] = DEFAULT_PRELOAD):
        self.preload = tuple(preload)
        self._process = None
        self._conn = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker process, if any; the next batch starts a new one."""
        with self._lock:
            self._stop_worker()

    def score(
        self,
        response: str,
        answer: str | None,
        entry: dict | None,
        spec: RewardSpec,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> RewardResult:
        """Reward of one response (see ``score_batch``)."""
        return self.score_batch([(response, answer, entry)], spec, timeout_s)[0]

    def score_batch(
        self, items: Sequence[RewardInput], spec: RewardSpec, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> list[RewardResult]:
        """Rewards of ``(response, answer, entry)`` items, in one round trip to the worker.

        Each check of each item gets ``timeout_s`` seconds; one that hangs scores 0, and only
        it: the checks after it run in a fresh worker."""
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
            raise ValueError(f"timeout_s must be a number of seconds (got {timeout_s!r})")
        if not 0 < timeout_s < math.inf:
            raise ValueError(f"timeout_s must be positive and finite (got {timeout_s})")
        items = [tuple(item) for item in items]
        checks = {name: CHECKS[name] for name in spec.terms}
        tasks = [(index, name) for index in range(len(items)) for name in spec.terms]
        outcomes = []
        with self._lock:
            while len(outcomes) < len(tasks):
                outcomes += self._run(items, checks, tasks[len(outcomes) :], timeout_s)

        results = [RewardResult() for _ in items]
        failures = []
        for (index, name), (status, payload) in zip(tasks, outcomes):
            result = results[index]
            value = payload if status == _OK else 0.0
            result.parts[name] = value
            result.total += spec.terms[name] * value
            result.errors += status == _ERROR
            result.timeouts += status == _TIMEOUT
            if status != _OK:
                failures.append(f"check {name!r} on item {index}: {payload}")
        if failures:
            logger.warning(
                "%d of %d reward checks failed or timed out; first: %s",
                len(failures), len(tasks), failures[0],
            )
        return results

    def _run(self, items, checks, tasks, timeout_s) -> list[tuple[str, object]]:
        """Send ``tasks`` to the worker and collect outcomes until all are done or one hangs
        or kills the worker (its outcome is the last one returned)."""
        conn = self._worker()
        conn.send((items, checks, tasks))
        outcomes = []
        for _ in tasks:
            if not conn.poll(timeout_s):
                self._stop_worker()
                outcomes.append((_TIMEOUT, f"no result within {timeout_s} s"))
                break
            try:
                outcomes.append(conn.recv())
            except EOFError:
                self._stop_worker()
                outcomes.append((_ERROR, "the check killed the worker process"))
                break
        return outcomes

    def _worker(self):
        """The pipe to a live, ready worker, spawning one if needed."""
        if self._process is not None and self._process.is_alive():
            return self._conn
        self._stop_worker()
        context = multiprocessing.get_context("spawn")
        conn, child_conn = context.Pipe()
        process = context.Process(
            target=_worker_main, args=(child_conn, self.preload), name="reward-scorer", daemon=True
        )
        process.start()
        child_conn.close()
        self._process, self._conn = process, conn
        if conn.poll(WORKER_START_TIMEOUT_S):
            with contextlib.suppress(EOFError):  # EOF: it died while starting
                if conn.recv() == _READY:
                    return conn
        exitcode = process.exitcode
        self._stop_worker()
        raise RuntimeError(
            f"the reward worker process did not start (exit code {exitcode}); its traceback, "
            f"if any, is above; check that Scorer(preload={self.preload}) names importable modules"
        )

    def _stop_worker(self) -> None:
        if self._process is None:
            return
        self._conn.close()
        self._process.kill()
        self._process.join()
        self._process.close()
        self._process = self._conn = None
