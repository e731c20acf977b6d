"""Replay: one transformers forward over inputs rebuilt from a sample's soft steps gives
back its rollout log-probabilities (default model, float32)."""

import pytest
import torch

from rollout.settings import SamplingConfig
from rollout.worker import GroupRequest
from vllm_soft.params import SoftThinkingParams
from vllm_soft.replay import rebuild_inputs_embeds, response_logprobs

pytestmark = pytest.mark.slow

TOLERANCE = 1e-3


ACTIONS = {
    "token": {"mode": "replace"},
    "token, add": {"mode": "add"},
    "concrete": {"noise": "gumbel", "tau": 0.5},
    "token under gumbel noise": {"noise": "gumbel", "tau": 0.5, "action": "token"},
    "dirichlet, tiny concentrations": {"noise": "dirichlet", "alpha": 0.3},
    "multiplex": {"multiplex": 4},
    "gaussian": {"noise": "gaussian", "sigma": 0.5},
    "multiplex without replacement, uniform": {"multiplex": 3, "multiplex_replacement": False, "multiplex_weights": "uniform"},
}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_rebuilt_inputs_reproduce_rollout_logprobs(action, default_rollout_worker, default_hf_model, default_tokenizer):
    knobs = {"scale": 0.5, "emit": "sample", "max_soft_steps": 8, "temperature": 0.8, **ACTIONS[action]}
    sampling = SamplingConfig(group_size=2, temperature=1.0, max_tokens=32, seed=3, soft_thinking=knobs)
    prompts = [
        default_tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("What is 3 + 4?", "Name a prime number bigger than 10.")
    ]
    groups = [GroupRequest(group_id=i, prompt=p, answer="7") for i, p in enumerate(prompts)]
    samples = [s for group in default_rollout_worker.generate(groups, sampling) for s in group]
    assert len(samples) == 4
    assert any(len(s.response_token_ids) > 8 for s in samples), "the check needs discrete tokens after thinking"
    embedding = default_hf_model.get_input_embeddings().weight
    for sample in samples:
        assert 0 < len(sample.soft_steps) <= 8  # the budget, or an early end of the answer
        resolved = SoftThinkingParams().with_overrides(sample.soft_knobs)
        if resolved.multiplex:
            assert all(step["draws"] is not None for step in sample.soft_steps)
        inputs = rebuild_inputs_embeds(
            embedding, sample.prompt_token_ids, sample.response_token_ids, sample.soft_steps, resolved.mode, 0.5
        )
        with torch.no_grad():
            logits = default_hf_model(inputs_embeds=inputs.unsqueeze(0)).logits[0]
        replayed = response_logprobs(
            logits[len(sample.prompt_token_ids) - 1 :], sample.response_token_ids, sample.soft_steps, resolved,
            temperature=1.0, embedding_VH=embedding,
        )
        gap = (replayed - torch.tensor(sample.rollout_logprobs)).abs()
        assert float(gap.max()) <= TOLERANCE, f"largest gap {float(gap.max()):.2e} at {int(gap.argmax())}"
