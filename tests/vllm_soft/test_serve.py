"""The OpenAI server, for real: `vllm-soft serve tiny --soft-thinking`, called with the openai client.

The server (``server``, tests/vllm_soft/conftest.py) is shared with the API fuzzing test;
requests go to loopback only.
"""

import asyncio
import json

import openai
import pytest

from vllm_soft import soft_knobs, soft_summary, soft_trace

pytestmark = pytest.mark.slow

MAX_TOKENS = 8


def _extra_body(soft_knobs):
    """OpenAI `extra_body` of a soft request (flat `vllm_xargs`), or of a plain one (None: it
    opts out, as every request of a `--soft-thinking` server is soft by default)."""
    if soft_knobs is None:
        return {"vllm_xargs": {"soft_thinking": 0}}
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
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0.0,
                                           extra_body=_extra_body(None))
    soft = client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0.0,
        extra_body={"vllm_xargs": {"soft_thinking": 1, "soft_thinking_top_k": 1}},
    )
    assert soft.choices[0].message.content == plain.choices[0].message.content
    assert soft.usage.completion_tokens == MAX_TOKENS


def _assert_trace_matches_tokens(choice, token_ids, num_steps, deterministic=True):
    summary = {k: v for k, v in choice.soft_thinking.items() if k not in ("steps", "knobs")}
    assert summary == soft_summary(choice) == {"num_soft_steps": num_steps, "end_reason": None, "cold_stop": False}
    trace = soft_trace(choice)
    assert [step["position"] for step in trace] == list(range(num_steps))
    for step in trace:
        assert step["emitted"] == token_ids[step["position"]]
        assert abs(sum(step["weights"]) - 1.0) < 1e-5
        if deterministic:
            assert step["token_ids"][0] == step["emitted"]  # argmax emission, no noise


def test_completions_carry_the_trace_on_every_choice(server):
    client, model, _ = server
    response = client.completions.create(
        model=model, prompt="The answer is", max_tokens=MAX_TOKENS, temperature=1.0, seed=0, n=2,
        extra_body={"return_token_ids": True, **_extra_body({"top_k": 5})},
    )
    assert len(response.choices) == 2
    for choice in response.choices:  # temperature 1: Gumbel-Softmax soft steps (noise 'auto')
        _assert_trace_matches_tokens(choice, choice.token_ids, MAX_TOKENS, deterministic=False)
        assert choice.soft_thinking["knobs"]["noise"] == "gumbel"
    plain = client.completions.create(model=model, prompt="The answer is", max_tokens=MAX_TOKENS, temperature=0.0,
                                      extra_body=_extra_body(None))
    assert getattr(plain.choices[0], "soft_thinking", None) is None


def test_a_client_that_sends_nothing_extra_gets_soft_thinking(server):
    """Off-the-shelf OpenAI clients send no vllm_xargs: a --soft-thinking server makes them
    soft with its defaults (built-in here: top_k 15)."""
    client, model, _ = server
    completion = client.completions.create(model=model, prompt="The answer is", max_tokens=MAX_TOKENS, temperature=0.0)
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=MAX_TOKENS, temperature=0.0)
    for choice in (completion.choices[0], chat.choices[0]):
        assert soft_summary(choice)["num_soft_steps"] == MAX_TOKENS
        support = [len(step["token_ids"]) for step in soft_trace(choice)]
        assert 1 < max(support) <= 15, "mixtures of at most the built-in top_k tokens"
    opted_out = client.completions.create(model=model, prompt="The answer is", max_tokens=MAX_TOKENS, temperature=0.0,
                                          extra_body=_extra_body(None))
    assert getattr(opted_out.choices[0], "soft_thinking", None) is None


def test_chat_carries_the_trace(server):
    client, model, _ = server
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=MAX_TOKENS,
        temperature=0.0, extra_body={"return_token_ids": True, **_extra_body({"top_k": 5, "mode": "add"})},
    )
    (choice,) = response.choices
    _assert_trace_matches_tokens(choice, choice.token_ids, MAX_TOKENS)


def test_multiplex_is_a_decoding_option_over_the_api(server):
    """Multiplex Thinking over the API: each step feeds back the mixture of the drawn tokens
    (a JSON boolean knob arrives through vllm_xargs too), and the trace says what was drawn."""
    client, model, _ = server
    knobs = {"top_k": 6, "top_p": 1.0, "min_p": 0.0, "multiplex": 3, "multiplex_replacement": False, "emit": "sample"}
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=MAX_TOKENS,
        temperature=0.0, seed=1, extra_body=_extra_body(knobs),
    )
    trace = soft_trace(response.choices[0])
    assert len(trace) == MAX_TOKENS
    for step in trace:
        assert sorted(d for d in step["draws"] if d) == [1, 2, 3], "three distinct tokens, ranked"
        assert [d > 0 for d in step["draws"]] == [w > 0 for w in step["weights"]]
        assert step["draws"][step["token_ids"].index(step["emitted"])] == 1, "the emitted token is the first draw"


def test_n_samples_differ_and_a_seeded_request_repeats(server):
    """n = 4 at temperature 1.0 (every request soft, nothing else said): 4 distinct completions
    for each of 6 prompts, the trace naming the randomness; the same seeded request twice gives
    the same 4; n = 4 with a soft span that draws nothing is HTTP 400 naming the knob."""
    client, model, _ = server
    prompts = ["The answer is", "Hello there", "1 + 1 =", "Once upon a time", "My name is", "The capital of"]
    response = client.completions.create(model=model, prompt=prompts, max_tokens=MAX_TOKENS, temperature=1.0, n=4)
    for prompt_index in range(len(prompts)):
        choices = response.choices[4 * prompt_index: 4 * prompt_index + 4]
        assert len({choice.text for choice in choices}) == 4
        assert all(soft_knobs(choice)["noise"] == "gumbel" for choice in choices)
    seeded = [client.completions.create(model=model, prompt=prompts[0], max_tokens=MAX_TOKENS, temperature=1.0, n=4,
                                        seed=11) for _ in range(2)]
    assert [c.text for c in seeded[0].choices] == [c.text for c in seeded[1].choices]
    assert len({c.text for c in seeded[0].choices}) == 4
    with pytest.raises(openai.BadRequestError, match="noise"):
        client.completions.create(model=model, prompt=prompts[0], max_tokens=MAX_TOKENS, temperature=1.0, n=4,
                                  extra_body=_extra_body({"noise": "none"}))


@pytest.mark.parametrize(
    "xargs, knob",
    [({"soft_thinking_top_p": 3}, "top_p"), ({"soft_thinking_mode": "mix"}, "mode"),
     ({"soft_thinking_think_end": "<no-such-token>"}, "think_end"), ({"soft_thinking_topk": 2}, "topk"),
     ({"soft_thinking_multiplex": 2, "soft_thinking_noise": "gumbel"}, "multiplex")],
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


def _streamed_steps(chunks):
    """(steps by choice index, the finishing chunk's soft_thinking field by index) of a stream."""
    steps, finals = {}, {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            field = choice.get("soft_thinking")
            if field is None:
                continue
            steps.setdefault(choice["index"], []).extend(field["steps"])
            if choice.get("finish_reason") is not None:
                finals[choice["index"]] = {k: v for k, v in field.items() if k != "steps"}
    return steps, finals


SEEDED = dict(max_tokens=MAX_TOKENS, temperature=1.0, seed=3)
NOISY = {"vllm_xargs": {"soft_thinking_top_k": 5, "soft_thinking_noise": "gumbel", "soft_thinking_emit": "sample"}}


def test_streamed_completions_carry_the_steps_of_the_non_streamed_trace(server):
    client, model, _ = server
    whole = client.completions.create(model=model, prompt="The answer is", n=2, extra_body=NOISY, **SEEDED)
    stream = client.completions.create(model=model, prompt="The answer is", n=2, extra_body=NOISY, stream=True,
                                       **SEEDED)
    steps, finals = _streamed_steps(chunk.model_dump() for chunk in stream)
    assert sorted(steps) == [0, 1]
    for choice in whole.choices:
        assert steps[choice.index] == soft_trace(choice)
        final = dict(finals[choice.index])
        assert final.pop("knobs") == soft_knobs(choice) and soft_knobs(choice)["noise"] == "gumbel"
        assert final == soft_summary(choice) == {"num_soft_steps": MAX_TOKENS, "end_reason": None, "cold_stop": False}


def test_streamed_chat_carries_the_steps_of_the_non_streamed_trace(server):
    client, model, _ = server
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    whole = client.chat.completions.create(model=model, messages=messages, extra_body=NOISY, **SEEDED)
    stream = client.chat.completions.create(model=model, messages=messages, extra_body=NOISY, stream=True, **SEEDED)
    chunks = [chunk.model_dump() for chunk in stream]
    steps, finals = _streamed_steps(chunks)
    assert steps[0] == soft_trace(whole.choices[0]) and finals[0]["num_soft_steps"] == MAX_TOKENS
    with_steps = [c for c in chunks if c["choices"] and c["choices"][0].get("soft_thinking")]
    assert len(with_steps) > 1, "steps arrive as the tokens do, not all at the end"


def test_raw_server_sent_events_carry_the_steps(server):
    import httpx

    _, model, port = server
    body = {"model": model, "prompt": "Hello there", "n": 2, "stream": True, "return_token_ids": True, **SEEDED,
            **NOISY}
    chunks = []
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[len("data: "):]))
    steps, finals = _streamed_steps(chunks)
    tokens = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            tokens.setdefault(choice["index"], []).extend(choice.get("token_ids") or [])
    for index in (0, 1):
        assert [step["position"] for step in steps[index]] == list(range(MAX_TOKENS))
        assert [step["emitted"] for step in steps[index]] == tokens[index]
        assert finals[index]["num_soft_steps"] == MAX_TOKENS
