"""The one definition of a correct answer, and the batch numbers built on it."""

import pytest

from rollout.sample import Sample
from rollout.summary import accuracy, is_correct, summarize


def sample(parts: dict[str, float], tokens: int = 4, soft: int = 0) -> Sample:
    steps = [{"position": i, "end_reason": None} for i in range(soft)]
    return Sample(group_id=0, sample_index=0, prompt="p", prompt_token_ids=[1], response_token_ids=list(range(tokens)),
                  response_text="r", rollout_logprobs=[0.0] * tokens, finish_reason="stop", soft_steps=steps,
                  reward_parts=parts)


def test_only_full_marks_are_correct():
    assert is_correct(sample({"correct": 1.0, "format": 0.0}))
    assert not is_correct(sample({"correct": 0.5}))  # partial credit
    assert is_correct(sample({"format": 1.0, "choice": 1.0}))  # the first answer check present
    assert not is_correct(sample({"correct": 0.0, "choice": 1.0}), term="correct")
    with pytest.raises(ValueError, match="no answer-checking reward term"):
        is_correct(sample({"format": 1.0}))


def test_accuracy_is_the_share_of_correct_samples():
    samples = [sample({"correct": value}) for value in (1.0, 0.5, 0.5, 0.0)]
    assert accuracy(samples) == 0.25  # partial credit averaged would give 0.5
    assert accuracy([sample({"format": 1.0})]) is None and accuracy([]) is None
    summary = summarize([sample({"correct": 1.0}, tokens=4, soft=1), sample({"correct": 0.0}, tokens=6, soft=2)], 2.0)
    assert summary["accuracy"] == 0.5 and summary["soft_step_fraction"] == 0.3 and summary["tokens_per_s"] == 5.0
