"""The second real model, Gemma 3 270M (base), built offline from its GGUF chunk packages:
vLLM's greedy tokens are transformers' (a real Gemma 3: embeddings scaled by sqrt(640),
sliding-window layers of 512), soft top_k 1 is greedy, and the learner replays a soft
rollout on it within 1e-3."""

import pytest
import torch
from in_process import engine_in_this_process
from soft_checks import generate, soft_params
from vllm import SamplingParams

from trainer.grpo import logprob_gap
from trainer.policy import ReplayBatch, ReplayPolicy
from vllm_soft import models, soft_knobs, soft_trace
from vllm_soft.params import SoftThinkingParams

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM

    path = models.fetch("gemma3-270m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    with engine_in_this_process():
        llm = LLM(model=str(path), dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
                  kv_cache_memory_bytes=1 << 28, additional_config={"soft_thinking": {}})
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yield llm, tokenizer, hf
    llm.llm_engine.engine_core.shutdown()


def test_the_model_is_a_gemma3_with_its_tokenizer_and_turn_format(gemma):
    _, tokenizer, hf = gemma
    assert type(hf).__name__ == "Gemma3ForCausalLM" and hf.config.hidden_size == 640
    assert tokenizer("Hi").input_ids[0] == tokenizer.bos_token_id, "<bos> first, as the GGUF asks"
    turn = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert turn == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_greedy_is_transformers_greedy_and_soft_top_k_1_is_greedy(gemma):
    llm, tokenizer, hf = gemma
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    greedy = generate(llm, prompts, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    for prompt, completion in zip(prompts, greedy):
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):]
        assert list(completion.token_ids) == expected.tolist()
    assert "France" in greedy[0].text or "Paris" in greedy[0].text, greedy[0].text
    soft = generate(llm, prompts, soft_params(12, top_k=1))
    assert [list(c.token_ids) for c in soft] == [list(c.token_ids) for c in greedy]


def test_the_learner_replays_a_soft_rollout_within_1e_3(gemma):
    llm, tokenizer, hf = gemma
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=5, logprobs=0,
                            extra_args={"soft_thinking": {"emit": "sample", "max_soft_steps": 6}})
    completions = generate(llm, prompts, params)
    rollout = [[0.0 if s["logprob"] is None else s["logprob"] for s in soft_trace(c)] + [  # forced: 0
        next(iter(step.values())).logprob for step in c.logprobs[len(soft_trace(c)):]] for c in completions]
    batch = ReplayBatch(prompts, [list(c.token_ids) for c in completions], [soft_trace(c) for c in completions],
                        knobs=SoftThinkingParams().with_overrides(soft_knobs(completions[0])), temperature=1.0)
    with torch.no_grad():
        logprobs, mask = ReplayPolicy(hf)(batch)
    recorded = torch.zeros_like(logprobs)
    for row, values in enumerate(rollout):
        recorded[row, : len(values)] = torch.tensor(values)
    assert float(logprob_gap(logprobs, recorded, mask)) <= 1e-3
