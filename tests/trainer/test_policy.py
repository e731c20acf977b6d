"""The learner's replay of rollouts: log-probs at step 0 equal the engine's (float32), noisy
soft steps (whose log-probability is a density of the fed-back weights) included."""

import pytest
import torch

from rollout.settings import SamplingConfig
from rollout.worker import GroupRequest
from trainer.grpo import logprob_gap
from trainer.policy import ReplayBatch, ReplayPolicy
from vllm_soft.params import SoftThinkingParams

pytestmark = pytest.mark.slow

MODES = {
    "discrete": None,
    "replace": {"mode": "replace", "emit": "sample", "max_soft_steps": 12},
    "add": {"mode": "add", "scale": 0.7, "emit": "sample", "max_soft_steps": 12},
    "replace_gumbel": {"mode": "replace", "noise": "gumbel", "tau": 0.5, "max_soft_steps": 12},
    "add_dirichlet": {"mode": "add", "noise": "dirichlet", "alpha": 2.0, "emit": "sample", "max_soft_steps": 12},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_learner_vs_rollout_logprob_gap_at_step_0_is_below_1e_3(mode, default_rollout_worker, default_hf_model, default_tokenizer):
    knobs = MODES[mode]
    sampling = SamplingConfig(group_size=4, temperature=1.0, max_tokens=24, seed=7, soft_thinking=knobs)
    prompts = [
        default_tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("What is 2 + 6?", "Write one word that rhymes with cat.")
    ]
    samples = [s for g in default_rollout_worker.generate([GroupRequest(i, p) for i, p in enumerate(prompts)], sampling) for s in g]
    batch = ReplayBatch(
        prompt_ids=[s.prompt_token_ids for s in samples], response_ids=[s.response_token_ids for s in samples],
        soft_steps=[s.soft_steps for s in samples], knobs=SoftThinkingParams().with_overrides(knobs or {}),
        temperature=1.0,
    )
    with torch.no_grad():
        logprobs, mask = ReplayPolicy(default_hf_model)(batch)  # one padded forward for all 8
    rollout = torch.zeros_like(logprobs)
    for row, s in enumerate(samples):
        rollout[row, : len(s.rollout_logprobs)] = torch.tensor(s.rollout_logprobs)
    assert int(mask.sum()) == sum(len(s.response_token_ids) for s in samples)
    assert bool((mode == "discrete") == all(not s.soft_steps for s in samples))
    assert float(logprob_gap(logprobs, rollout, mask)) <= 1e-3
