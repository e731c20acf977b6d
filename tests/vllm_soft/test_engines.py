"""vLLM loads both built models, and its greedy decoding matches transformers'."""

import pytest
import torch
from transformers import AutoTokenizer
from vllm import SamplingParams, TokensPrompt

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]
CHAT_PROMPTS = ["What is 7 + 5?", "Name three colours of the rainbow."]


def _prompt_token_ids(tokenizer) -> list[list[int]]:
    plain = [tokenizer(p).input_ids for p in PROMPTS]
    chat = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for p in CHAT_PROMPTS
    ]
    return plain + chat


@torch.no_grad()
def transformers_greedy(model, prompt_ids: list[int], num_tokens: int) -> list[int]:
    """Greedy decoding with a plain argmax loop (no EOS stop), as the reference."""
    ids = torch.tensor([prompt_ids])
    past, out = None, []
    step_input = ids
    for _ in range(num_tokens):
        result = model(input_ids=step_input, past_key_values=past, use_cache=True)
        past = result.past_key_values
        next_id = int(result.logits[0, -1].argmax())
        out.append(next_id)
        step_input = torch.tensor([[next_id]])
    return out


def _vllm_greedy(llm, prompts: list[list[int]], num_tokens: int) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=num_tokens, ignore_eos=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_vllm_loads_tiny_model(tiny_engine, tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prompts = _prompt_token_ids(tokenizer)
    first = _vllm_greedy(tiny_engine, prompts, 8)
    assert [len(t) for t in first] == [8] * len(prompts)
    assert all(0 <= t < len(tokenizer) for tokens in first for t in tokens)
    assert _vllm_greedy(tiny_engine, prompts, 8) == first


def test_vllm_greedy_equals_transformers_greedy_on_default_model(default_engine, default_model_path, default_hf_model):
    """5 prompts x 16 tokens, float32 on both sides."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    model = default_hf_model
    prompts = _prompt_token_ids(tokenizer)
    assert len(prompts) == 5
    expected = [transformers_greedy(model, p, 16) for p in prompts]
    assert _vllm_greedy(default_engine, prompts, 16) == expected


def test_default_model_answers_a_chat_prompt(default_engine):
    outputs = default_engine.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0.0, max_tokens=16),
        use_tqdm=False,
    )
    assert "Paris" in outputs[0].outputs[0].text
