"""The vLLM request a rollout group becomes: its own seed range, and no logits processing
that the learner's replay (raw logits) could not reproduce."""

import pytest
from vllm import SamplingParams

from rollout.settings import SamplingConfig
from rollout.worker import group_seed, logits_processor_settings, sampling_params


def test_groups_lie_group_size_seeds_apart():
    assert [group_seed(5, g, 4) for g in range(3)] == [5, 9, 13]
    params = sampling_params(SamplingConfig(group_size=4, seed=5), 2)
    assert (params.n, params.seed) == (4, 13)


@pytest.mark.parametrize("setting, value", [
    ("presence_penalty", 0.5), ("frequency_penalty", -0.2), ("repetition_penalty", 1.1), ("min_tokens", 3),
    ("logit_bias", {7: 2.0}), ("bad_words", ["no"]), ("allowed_token_ids", [1, 2, 3]),
])
def test_each_logits_processor_setting_is_named(setting, value):
    assert logits_processor_settings(SamplingParams(**{setting: value})) == [setting]


def test_rollout_requests_use_none():
    for soft_thinking in (None, {}, {"noise": "gumbel", "emit": "sample"}):
        assert logits_processor_settings(sampling_params(SamplingConfig(soft_thinking=soft_thinking), 0)) == []
