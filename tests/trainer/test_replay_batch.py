"""A replay batch takes its soft knobs from the samples (what the engine resolved), one set per batch."""

import pytest

from rollout.sample import Sample
from trainer.policy import ReplayBatch
from vllm_soft.params import SoftThinkingParams


def _sample(knobs: dict | None) -> Sample:
    return Sample(
        group_id=0, sample_index=0, prompt="p", prompt_token_ids=[1, 2], response_token_ids=[3, 4],
        response_text="x", rollout_logprobs=[-0.1, -0.2], finish_reason="length", soft_knobs=knobs,
    )


def test_the_batch_replays_with_the_samples_knobs():
    knobs = {**SoftThinkingParams(mode="add", scale=0.3, temperature=0.9).to_dict(), "think_end_id": 7}
    batch = ReplayBatch.from_samples([_sample(knobs), _sample(dict(knobs))], temperature=0.7)
    assert batch.knobs == SoftThinkingParams().with_overrides(knobs)
    assert (batch.knobs.mode, batch.knobs.scale, batch.knobs.temperature, batch.knobs.think_end_id) == ("add", 0.3, 0.9, 7)
    assert batch.temperature == 0.7 and batch.prompt_ids == [[1, 2], [1, 2]]


def test_plain_samples_replay_with_no_soft_knobs():
    assert ReplayBatch.from_samples([_sample(None)], temperature=1.0).knobs == SoftThinkingParams()


def test_samples_made_with_different_knobs_cannot_share_a_batch():
    with pytest.raises(ValueError, match="different soft-thinking knobs.*0.5.*0.6"):
        ReplayBatch.from_samples([_sample({"temperature": 0.5}), _sample({"temperature": 0.6})], temperature=1.0)


def test_a_sample_keeps_its_knobs_through_json():
    sample = _sample({"temperature": 0.5, "mode": "add"})
    assert Sample.from_json(sample.to_json()).soft_knobs == {"temperature": 0.5, "mode": "add"}
