"""Numbers that describe a batch of samples (what ``python -m rollout`` and the trainer log)."""

import statistics

from rollout.sample import Sample

ACCURACY_TERMS = ("correct", "choice", "reasoning_gym")
"""Reward parts that mean "the answer is right", first found wins."""


def accuracy(samples: list[Sample]) -> float | None:
    """Mean score of the first answer-checking reward term present; None if there is none."""
    for term in ACCURACY_TERMS:
        if samples and term in samples[0].reward_parts:
            return statistics.fmean(s.reward_parts[term] for s in samples)
    return None


def summarize(samples: list[Sample], seconds: float) -> dict:
    """Accuracy, reward, lengths, soft-step fraction and throughput of ``samples``."""
    tokens = sum(len(s.response_token_ids) for s in samples)
    soft = sum(len(s.soft_steps) for s in samples)
    return {
        "samples": len(samples),
        "groups": len({s.group_id for s in samples}),
        "accuracy": accuracy(samples),
        "reward_mean": statistics.fmean(s.reward for s in samples) if samples else None,
        "mean_response_tokens": tokens / len(samples) if samples else None,
        "soft_step_fraction": soft / tokens if tokens else 0.0,
        "cold_stop_fraction": statistics.fmean(
            bool(s.soft_steps) and s.soft_steps[-1]["end_reason"] == "cold_stop" for s in samples
        ) if samples else 0.0,
        "reward_errors": sum(s.metadata.get("reward_errors", 0) for s in samples),
        "seconds": seconds,
        "samples_per_s": len(samples) / seconds if seconds > 0 else None,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
    }
