"""Each sample of a rollout draws its own random stream: 8 groups x G = 8 of one prompt on a
real engine give 64 different soft steps (with seed + group id, sample i of group g would
repeat sample i - 1 of group g + 1)."""

import pytest
from vllm import TokensPrompt

from rollout.settings import SamplingConfig
from rollout.worker import sampling_params
from vllm_soft.trace import soft_trace

pytestmark = pytest.mark.slow


def test_64_samples_of_8_groups_draw_64_distinct_streams(tiny_engine):
    sampling = SamplingConfig(group_size=8, max_tokens=2, seed=7,
                              soft_thinking={"noise": "gumbel", "tau": 0.5, "emit": "sample"})
    prompt = TokensPrompt(prompt_token_ids=[1, 2, 3, 4])
    outputs = tiny_engine.generate([prompt] * 8, [sampling_params(sampling, g) for g in range(8)], use_tqdm=False)
    first_steps = [tuple(soft_trace(c)[0]["weights"]) for output in outputs for c in output.outputs]
    assert len(first_steps) == 64
    assert len(set(first_steps)) == 64, "two samples drew the same Gumbel noise"
