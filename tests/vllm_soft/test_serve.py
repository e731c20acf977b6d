"""The OpenAI server, for real: `vllm-soft serve tiny --soft-thinking`, called with the openai client.

Starts its own server process (the other tests share offline engines; a server is a
separate process by nature). Requests go to loopback only.
"""

import asyncio
import sys

import openai
import pytest
from openai_server import openai_server

from vllm_soft import soft_summary, soft_trace

pytestmark = pytest.mark.slow

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def server(tiny_model_path):
    command = [
        sys.executable, "-m", "vllm_soft.cli", "serve", str(tiny_model_path), "--soft-thinking",
        "--enforce-eager", "--dtype", "float32", "--max-model-len", "512", "--seed", "0",
        "--kv-cache-memory-bytes", str(1 << 29),
    ]
    with openai_server(command) as running:
        yield running


def _extra_body(soft_knobs):
    """OpenAI `extra_body` of a soft request (flat `vllm_xargs`), or None for a plain one."""
    if soft_knobs is None:
        return None
    return {"vllm_xargs": {"soft_thinking": 1, **{f"soft_thinking_{k}": v for k, v in soft_knobs.items()}}}


def _complete(client, model, prompt, soft_knobs=None):
    response = client.completions.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0, extra_body=_extra_body(soft_knobs)
    )
    return response.choices[0].text


def test_completions_soft_top_k_1_equals_plain_greedy(server):
    client, model, _ = server
    for prompt in ["Hello there", "The answer is", "1 + 1 ="]:
        assert _complete(client, model, prompt, {"top_k": 1}) == _complete(client, model, prompt)


def test_chat_soft_and_plain(server):
    client, model, _ = server
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0.0)
    soft = client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0.0,
        extra_body={"vllm_xargs": {"soft_thinking": 1, "soft_thinking_top_k": 1}},
    )
    assert soft.choices[0].message.content == plain.choices[0].message.content
    assert soft.usage.completion_tokens == MAX_TOKENS


def _assert_trace_matches_tokens(choice, token_ids, num_steps):
    summary = {k: v for k, v in choice.soft_thinking.items() if k != "steps"}
    assert summary == soft_summary(choice) == {"num_soft_steps": num_steps, "end_reason": None, "cold_stop": False}
    trace = soft_trace(choice)
    assert [step["position"] for step in trace] == list(range(num_steps))
    for step in trace:
        assert step["emitted"] == token_ids[step["position"]]
        assert abs(sum(step["weights"]) - 1.0) < 1e-5
        assert step["token_ids"][0] == step["emitted"]  # argmax emission, no noise


def test_completions_carry_the_trace_on_every_choice(server):
    client, model, _ = server
    response = client.completions.create(
        model=model, prompt="The answer is", max_tokens=MAX_TOKENS, temperature=1.0, seed=0, n=2,
        extra_body={"return_token_ids": True, **_extra_body({"top_k": 5})},
    )
    assert len(response.choices) == 2
    for choice in response.choices:
        _assert_trace_matches_tokens(choice, choice.token_ids, MAX_TOKENS)
    plain = client.completions.create(model=model, prompt="The answer is", max_tokens=MAX_TOKENS, temperature=0.0)
    assert getattr(plain.choices[0], "soft_thinking", None) is None


def test_chat_carries_the_trace(server):
    client, model, _ = server
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=MAX_TOKENS,
        temperature=0.0, extra_body={"return_token_ids": True, **_extra_body({"top_k": 5, "mode": "add"})},
    )
    (choice,) = response.choices
    _assert_trace_matches_tokens(choice, choice.token_ids, MAX_TOKENS)


@pytest.mark.parametrize(
    "xargs, knob",
    [({"soft_thinking_top_p": 3}, "top_p"), ({"soft_thinking_mode": "mix"}, "mode"),
     ({"soft_thinking_think_end": "<no-such-token>"}, "think_end"), ({"soft_thinking_topk": 2}, "topk")],
)
def test_bad_knob_is_http_400_naming_it_and_the_server_keeps_serving(server, xargs, knob):
    client, model, _ = server
    with pytest.raises(openai.BadRequestError, match=knob):
        client.completions.create(model=model, prompt="Hi", max_tokens=4, extra_body={"vllm_xargs": xargs})
    assert _complete(client, model, "Hi") != ""


def test_200_concurrent_requests_half_soft_match_one_at_a_time(server):
    client, model, port = server
    prompts = [f"Item {i}: the value is" for i in range(200)]
    knobs = [{"top_k": 4, "mode": "add" if i % 4 == 1 else "replace"} if i % 2 else None for i in range(200)]
    one_at_a_time = [_complete(client, model, p, k) for p, k in zip(prompts, knobs)]

    async def all_at_once():
        async_client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        async def one(prompt, soft_knobs):
            response = await async_client.completions.create(
                model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0, extra_body=_extra_body(soft_knobs)
            )
            return response.choices[0].text
        return await asyncio.gather(*(one(p, k) for p, k in zip(prompts, knobs)))

    concurrent = asyncio.run(all_at_once())
    assert len(concurrent) == 200
    assert concurrent == one_at_a_time
