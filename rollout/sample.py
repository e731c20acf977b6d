"""The sample record: one generated response with everything the learner and the logs need.

    engine output ──► Sample ──► rewards fill reward / reward_parts
                        │
                        ├──► learner: prompt_token_ids + response_token_ids, soft_steps
                        │    (rebuild the concept embeddings), rollout_logprobs (IS ratio)
                        └──► run directory: write_jsonl / read_jsonl, one JSON line each

A soft step is a ``vllm_soft.records.SoftStep`` (a JSON object): ``position`` indexes
``response_token_ids``; ``token_ids`` and ``weights`` are the kept support and the mixture
weights the engine actually used (after noise).
"""

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields

from rollout.files import atomic_write_text
from vllm_soft.records import SoftStep


@dataclass
class Sample:
    """One response to one prompt, with its group, trace, reward and provenance."""

    group_id: int
    """Which prompt group this sample belongs to (the G samples of a prompt share it)."""
    sample_index: int
    """Index of this sample within its group, 0..G-1."""
    prompt: str
    """The prompt text as sent to the engine, after the chat template."""
    prompt_token_ids: list[int]
    """Token ids of ``prompt``."""
    response_token_ids: list[int]
    """Generated token ids (the emitted tokens, soft positions included)."""
    response_text: str
    """Detokenised response."""
    rollout_logprobs: list[float]
    """Log-probability of each response token under the rollout policy."""
    finish_reason: str | None
    """Why generation stopped (``"stop"``, ``"length"``), as the engine reports it."""
    soft_steps: list[SoftStep] = field(default_factory=list)
    """The engine's record of each soft step (``vllm_soft.records.SoftStep``)."""
    soft_knobs: dict | None = None
    """The soft-thinking knobs the engine generated this sample with, resolved (its defaults
    merged with the request's, ``think_end_id`` set): what the learner replays it with.
    None for a plain sample."""
    reward: float = 0.0
    """Total reward (weighted sum of ``reward_parts``)."""
    reward_parts: dict[str, float] = field(default_factory=dict)
    """Unweighted score of each reward term, by name."""
    weight_version: int = 0
    """Version of the policy weights the engine generated this sample with."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per stage (e.g. ``generate``, ``reward``)."""
    answer: str | None = None
    """Reference answer of the prompt, if the source has one."""
    metadata: dict = field(default_factory=dict)
    """Source-specific data, e.g. the reasoning-gym entry."""

    def __post_init__(self):
        num_tokens = len(self.response_token_ids)
        if len(self.rollout_logprobs) != num_tokens:
            raise ValueError(
                f"rollout_logprobs must have one entry per response token "
                f"(got {len(self.rollout_logprobs)} for {num_tokens} tokens)"
            )
        for i, step in enumerate(self.soft_steps):
            position = step.get("position")
            if not isinstance(position, int) or not 0 <= position < num_tokens:
                raise ValueError(
                    f"soft_steps[{i}].position must be an int in [0, {num_tokens}) "
                    f"(got {position!r})"
                )
            for key in ("weights", "log_weights"):
                if len(step.get("token_ids", ())) != len(step.get(key, ())):
                    raise ValueError(
                        f"soft_steps[{i}] must have as many {key} as token_ids "
                        f"(got {len(step.get(key, ()))} and {len(step.get('token_ids', ()))})"
                    )

    def to_json(self) -> str:
        """This sample as one line of JSON (no trailing newline)."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> "Sample":
        """Parse a line written by ``to_json``."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError(f"a Sample line must be a JSON object (got {type(data).__name__})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Sample fields {unknown}; valid fields: {sorted(known)}")
        return cls(**data)


def write_jsonl(samples: Iterable[Sample], path: str | os.PathLike) -> None:
    """Write samples as JSON lines, atomically: readers see the old file or the whole new one."""
    atomic_write_text(path, "".join(sample.to_json() + "\n" for sample in samples))


def read_jsonl(path: str | os.PathLike) -> list[Sample]:
    """Read samples written by ``write_jsonl`` (blank lines are skipped)."""
    samples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                samples.append(Sample.from_json(line))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not a valid Sample: {e}") from e
    return samples
