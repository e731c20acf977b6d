"""Numbers that describe a batch of samples (what ``python -m rollout`` and the trainer log)."""

import statistics

from rollout.sample import Sample

ACCURACY_TERMS = ("correct", "choice", "reasoning_gym")
"""Reward parts that check the answer, first found wins."""


def is_correct(sample: Sample, term: str | None = None) -> bool:
    """The one definition of a right answer (training logs, the trainer's held-out
    evaluation and ``vllm-soft eval``): ``term`` (or the first of ``ACCURACY_TERMS``
    present) scores full marks; partial credit is not correct."""
    terms = (term,) if term is not None else ACCURACY_TERMS
    for name in terms:
        if name in sample.reward_parts:
            return sample.reward_parts[name] >= 1.0
    raise ValueError(f"sample has no answer-checking reward term {terms}; it has {list(sample.reward_parts)}")


def accuracy(samples: list[Sample]) -> float | None:
    """Share of ``samples`` that are correct (``is_correct``); None without samples or
    without an answer-checking reward term."""
    if not samples or not any(term in samples[0].reward_parts for term in ACCURACY_TERMS):
        return None
    return statistics.fmean(is_correct(s) for s in samples)


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
