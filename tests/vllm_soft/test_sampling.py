"""What a soft request's randomness means, offline (the API: tests/vllm_soft/test_serve.py):
a request that samples (temperature > 0) gets randomised soft steps (noise 'auto': Gumbel-
Softmax), so n samples differ and a retry differs; a seeded one repeats exactly; a greedy one
is Soft Thinking as the paper runs it; n copies of one soft span are refused. On the tiny
model, whose next-token distributions are wide enough that 4 honest samples of 16 tokens
never coincide (the default model's can: a confident model repeats itself however it is
sampled)."""

import pytest
from soft_checks import chat_prompts, generate
from vllm import SamplingParams, TokensPrompt

from vllm_soft import soft_knobs, soft_summary

pytestmark = pytest.mark.slow

TOKENS = 16


def _samples(llm, prompts, **sampling):
    params = SamplingParams(max_tokens=TOKENS, ignore_eos=True, extra_args={"soft_thinking": {}}, **sampling)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [output.outputs for output in outputs]


def test_n_samples_at_temperature_1_differ_and_a_seeded_request_repeats(tiny_engine, default_tokenizer):
    prompts = chat_prompts(default_tokenizer, 6)
    for completions in _samples(tiny_engine, prompts, n=4, temperature=1.0):
        assert len({tuple(c.token_ids) for c in completions}) == 4
        for completion in completions:
            assert soft_knobs(completion)["noise"] == "gumbel"
            assert soft_summary(completion)["num_soft_steps"] == TOKENS
    first, again = (_samples(tiny_engine, prompts[:2], n=4, temperature=1.0, seed=7) for _ in range(2))
    for completions, repeated in zip(first, again):
        assert [list(c.token_ids) for c in completions] == [list(c.token_ids) for c in repeated]
        assert len({tuple(c.token_ids) for c in completions}) == 4
    # A retry of an unseeded request (a chat UI's "regenerate") differs too.
    retry = _samples(tiny_engine, prompts[:1], n=1, temperature=0.7)[0][0]
    assert list(retry.token_ids) != list(_samples(tiny_engine, prompts[:1], n=1, temperature=0.7)[0][0].token_ids)


def test_a_greedy_soft_request_is_deterministic_soft_thinking(tiny_engine, default_tokenizer):
    prompts = chat_prompts(default_tokenizer, 2)
    params = SamplingParams(temperature=0.0, max_tokens=TOKENS, ignore_eos=True, extra_args={"soft_thinking": {}})
    first, second = generate(tiny_engine, prompts, params), generate(tiny_engine, prompts, params)
    assert [list(c.token_ids) for c in first] == [list(c.token_ids) for c in second]
    assert all(soft_knobs(c)["noise"] == "none" for c in first)


def test_n_copies_of_one_soft_span_are_refused_naming_the_knob(tiny_engine, default_tokenizer):
    prompt = TokensPrompt(prompt_token_ids=chat_prompts(default_tokenizer, 1)[0])
    params = SamplingParams(n=4, temperature=1.0, max_tokens=TOKENS, extra_args={"soft_thinking": {"noise": "none"}})
    with pytest.raises(ValueError, match="soft_thinking.noise 'none' with emit 'argmax' draws nothing"):
        tiny_engine.generate([prompt], params, use_tqdm=False)
    sampled = SamplingParams(n=4, temperature=1.0, max_tokens=TOKENS, seed=3,
                             extra_args={"soft_thinking": {"noise": "none", "emit": "sample"}})
    completions = tiny_engine.generate([prompt], sampled, use_tqdm=False)[0].outputs
    assert len({tuple(c.token_ids) for c in completions}) > 1, "sampled emission draws the tokens"
