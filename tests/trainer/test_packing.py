"""Shared-prompt packing and block attention: each response's log-probs and gradients equal
those of its own plain forward (one sequence, no padding, the model's SDPA)."""

import math
import random

import pytest
import torch

from trainer.packing import pack_by_prompt
from trainer.policy import ReplayBatch, ReplayPolicy
from vllm_soft.params import SoftThinkingParams
from vllm_soft.replay import rebuild_inputs_embeds, response_logprobs


def test_pack_by_prompt_layout_by_hand():
    packed = pack_by_prompt([[1, 2], [3], [1, 2]], [[5, 6, 7], [8], [9, 4]])
    assert packed.rows == [0, 1, 0]
    assert packed.input_ids_BT.tolist() == [[1, 2, 5, 6, 9], [3, 0, 0, 0, 0]]
    assert packed.position_ids_BT.tolist() == [[0, 1, 2, 3, 2], [0, 0, 0, 0, 0]]
    assert packed.predicting_columns(0) == [1, 2, 3]
    assert packed.predicting_columns(1) == [0]
    assert packed.predicting_columns(2) == [1, 4]


def test_attention_blocks_by_hand():
    blocks = pack_by_prompt([[1, 2], [3], [1, 2]], [[5, 6, 7], [8], [9, 4]]).attention_blocks()
    width = 5  # flat index = row * width + column
    valid = blocks.query_valid
    queries = [blocks.query_index[b][valid[b]].tolist() for b in range(len(valid))]
    # prompt blocks (row 0, row 1), then the responses with inputs (sequence 1 has none)
    assert queries == [[0, 1], [width + 0], [2, 3], [4]]
    assert blocks.key_index[2, :4].tolist() == [0, 1, 2, 3]
    assert blocks.key_index[3, :3].tolist() == [0, 1, 4]  # response 2 sees the prompt, not response 1
    assert blocks.mask[0, 0, :2, :2].tolist() == [[True, False], [True, True]]
    assert blocks.mask[2, 0, :2, :4].tolist() == [[True, True, True, False], [True, True, True, True]]
    assert blocks.mask[3, 0, 0, :4].tolist() == [True, True, True, False]


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
                                 log_weights=[math.log(w) for w in weights], draws=None, logprob=-1.0, end_reason=None))
            prompts.append(prompt)
            responses.append(response)
            steps.append(soft)
    return ReplayBatch(prompts, responses, steps, knobs=knobs, temperature=1.0)


def _one_by_one(model, batch: ReplayBatch) -> list[torch.Tensor]:
    """Each sequence alone through the model's plain forward."""
    knobs, embedding = batch.knobs, model.get_input_embeddings()
    out = []
    for prompt, response, steps in zip(batch.prompt_ids, batch.response_ids, batch.soft_steps):
        inputs = rebuild_inputs_embeds(embedding, prompt, response, steps, knobs.mode, knobs.scale)
        logits = model(inputs_embeds=inputs[None]).logits[0, len(prompt) - 1 :]
        out.append(response_logprobs(logits, response, steps, knobs, batch.temperature))
    return out


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("mode", ["replace", "add"])
def test_packed_logprobs_and_gradients_equal_one_sequence_forwards(tiny_llama, mode, share):
    batch = _random_batch(SoftThinkingParams().with_overrides({"mode": mode, "scale": 0.5, "noise": "none"}))
    policy = ReplayPolicy(tiny_llama, share_prompts=share)
    tiny_llama.zero_grad()
    logprobs, mask = policy(batch)
    (logprobs * mask).sum().backward()
    packed_grads = [p.grad.clone() for p in tiny_llama.parameters()]
    tiny_llama.zero_grad()
    alone = _one_by_one(tiny_llama, batch)
    torch.stack([lp.sum() for lp in alone]).sum().backward()
    assert mask.sum(1).tolist() == [len(r) for r in batch.response_ids]
    for row, expected in enumerate(alone):
        torch.testing.assert_close(logprobs[row, : len(expected)], expected, atol=1e-6, rtol=0)
    for packed_grad, parameter in zip(packed_grads, tiny_llama.parameters()):
        # float64 model; the log-softmax runs in float32, so gradients agree to float32 rounding
        torch.testing.assert_close(packed_grad, parameter.grad, atol=1e-6, rtol=1e-5)
