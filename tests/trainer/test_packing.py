"""Shared-prompt packing: each response's log-probs and gradients equal its own unpacked forward's."""

import random

import pytest
import torch

from trainer.packing import PADDING, PROMPT, pack_by_prompt
from trainer.policy import ReplayBatch, ReplayPolicy
from vllm_soft.params import SoftThinkingParams


def test_pack_by_prompt_layout_by_hand():
    packed = pack_by_prompt([[1, 2], [3], [1, 2]], [[5, 6, 7], [8], [9, 4]])
    assert packed.rows == [0, 1, 0]
    assert packed.input_ids_BT.tolist() == [[1, 2, 5, 6, 9], [3, 0, 0, 0, 0]]
    assert packed.position_ids_BT.tolist() == [[0, 1, 2, 3, 2], [0, 0, 0, 0, 0]]
    assert packed.segments_BT.tolist() == [[PROMPT, PROMPT, 1, 1, 2], [PROMPT] + [PADDING] * 4]
    assert packed.predicting_columns(0, 3) == [1, 2, 3]
    assert packed.predicting_columns(1, 1) == [0]
    assert packed.predicting_columns(2, 2) == [1, 4]
    visible = packed.attention_mask()[0, 0]
    assert visible[4].tolist() == [True, True, False, False, True]  # response 2 sees the prompt, not response 1
    assert visible[3].tolist() == [True, True, True, True, False]
    assert packed.attention_mask()[1, 0, 2].tolist() == [False, False, True, False, False]  # padding sees only itself


def test_unshared_packing_is_one_row_per_sequence():
    packed = pack_by_prompt([[1, 2], [1, 2]], [[5, 6], [7]], share=False)
    assert packed.rows == [0, 1]
    assert packed.input_ids_BT.tolist() == [[1, 2, 5], [1, 2, 0]]


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).to(torch.float64)


def _random_batch(knobs: SoftThinkingParams) -> ReplayBatch:
    rng = random.Random(3)
    prompts, responses, steps = [], [], []
    for prompt_length in (5, 9):
        prompt = [rng.randrange(64) for _ in range(prompt_length)]
        for _ in range(3):
            response = [rng.randrange(64) for _ in range(rng.randint(1, 7))]
            soft = []
            for position in range(min(2, len(response))):
                weights = torch.softmax(torch.randn(3, dtype=torch.float64), 0).tolist()
                soft.append(dict(position=position, token_ids=[response[position], 1, 2], weights=weights,
                                 logprob=-1.0, end_reason=None))
            prompts.append(prompt)
            responses.append(response)
            steps.append(soft)
    return ReplayBatch(prompts, responses, steps, knobs=knobs, temperature=1.0)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_packed_logprobs_and_gradients_equal_unpacked(tiny_llama, mode):
    batch = _random_batch(SoftThinkingParams().with_overrides({"mode": mode, "scale": 0.5}))
    results = []
    for share in (True, False):
        tiny_llama.zero_grad()
        logprobs, mask = ReplayPolicy(tiny_llama, share_prompts=share)(batch)
        (logprobs * mask).sum().backward()
        results.append((logprobs, mask, [p.grad.clone() for p in tiny_llama.parameters()]))
    (packed, packed_mask, packed_grads), (padded, padded_mask, padded_grads) = results
    assert torch.equal(packed_mask, padded_mask)
    torch.testing.assert_close(packed[packed_mask], padded[padded_mask], atol=1e-10, rtol=0)
    for packed_grad, padded_grad in zip(packed_grads, padded_grads):
        # float64 model; the log-softmax runs in float32, so gradients agree to float32 rounding
        torch.testing.assert_close(packed_grad, padded_grad, atol=1e-6, rtol=1e-5)
