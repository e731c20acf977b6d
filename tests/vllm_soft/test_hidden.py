"""Mode 'hidden' (Coconut's continuous thought) in a real vLLM engine (CPU, float32),
checked against the transformers reference teacher-forced: every latent is the hidden
state the reference computes from the recorded inputs, and the tokens after the latent
span are the reference's greedy tokens."""

import pytest
import torch
from vllm import SamplingParams

from reference import teacher_forced_states
from soft_checks import NEAR_TIE, assert_replays, chat_prompts, generate, soft_params
from vllm_soft.params import SoftThinkingParams
from vllm_soft.trace import soft_summary, soft_trace

pytestmark = pytest.mark.slow


def _preemptions(llm) -> int:
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")


def test_zero_latent_steps_is_plain_decoding(default_engine, default_tokenizer):
    prompts = chat_prompts(default_tokenizer, 8)
    plain = generate(default_engine, prompts, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))
    hidden = generate(default_engine, prompts, soft_params(24, mode="hidden", max_soft_steps=0, think_end=30))
    for plain_completion, hidden_completion in zip(plain, hidden):
        assert list(hidden_completion.token_ids) == list(plain_completion.token_ids)
        assert soft_trace(hidden_completion) == [] and soft_summary(hidden_completion)["num_soft_steps"] == 0


def _assert_greedy_after(model, prompt_ids, completion, trace, knobs, start: int) -> int:
    """Tokens from ``start`` on are the reference's greedy ones, teacher-forced, up to a
    near-tie (where float noise may pick the other token); returns how many were checked."""
    logits, _ = teacher_forced_states(model, prompt_ids, list(completion.token_ids), trace, knobs)
    for position in range(start, len(completion.token_ids)):
        top2 = logits[position].topk(2).values
        if float(top2[0] - top2[1]) < NEAR_TIE:
            return position - start
        assert completion.token_ids[position] == int(logits[position].argmax()), position
    return len(completion.token_ids) - start


@pytest.mark.parametrize("knobs", [
    {"mode": "hidden", "max_soft_steps": 6},
    {"mode": "hidden", "max_soft_steps": 4, "rescale_latent": True, "think_end": 30, "latent_token": 31},
])
def test_latents_are_the_references_hidden_states_and_decoding_goes_on_greedily(
    knobs, default_engine, default_hf_model, default_tokenizer
):
    """8 prompts x 24 tokens: K latent steps (each the previous position's final-normed
    hidden state, within 1e-5 relative of the reference), the placeholder in the text, the
    forced think-end token when set, then greedy tokens identical to the reference's."""
    params = SoftThinkingParams().with_overrides(knobs)
    latent_steps, has_end = params.max_soft_steps, knobs.get("think_end") is not None  # SmolLM2 has no </think>
    prompts = chat_prompts(default_tokenizer, 8)
    completions = generate(default_engine, prompts, soft_params(24, **knobs))
    checked = 0
    for prompt_ids, completion in zip(prompts, completions):
        trace, _ = assert_replays(default_hf_model, prompt_ids, completion)  # latents: reference.LATENT_TOLERANCE
        assert len(trace) == latent_steps + has_end
        assert all(len(e["latent"]) == default_hf_model.config.hidden_size for e in trace[:latent_steps])
        assert all(e["logprob"] is None for e in trace)
        assert [e["end_reason"] for e in trace] == [None] * (len(trace) - 1) + ["budget"]
        if params.latent_token is not None:
            assert list(completion.token_ids[:latent_steps]) == [params.latent_token] * latent_steps
        if has_end:
            assert trace[-1]["latent"] is None and completion.token_ids[latent_steps] == params.think_end
        if params.rescale_latent:
            table = default_hf_model.get_input_embeddings().weight.double()
            target = float(table.pow(2).sum(-1).mean().sqrt())
            norms = [float(torch.tensor(e["latent"]).norm()) for e in trace[:latent_steps]]
            assert norms == pytest.approx([target] * latent_steps, rel=1e-5)
        checked += _assert_greedy_after(default_hf_model, prompt_ids, completion, trace, params, len(trace))
    assert checked >= 8 * 10, "most tokens after the latent span were checked"


def test_latent_positions_survive_preemption(preempting_engine, default_engine, default_hf_model, default_tokenizer):
    """24 requests with long latent spans on a KV cache that holds few of them: preempted
    requests are recomputed with their recorded latents, and give the output they give on
    an engine that never preempts (a wrong input would also show in the teacher-forced
    replay of every later step)."""
    knobs = {"mode": "hidden", "max_soft_steps": 20}
    params = SoftThinkingParams().with_overrides(knobs)
    prompts = chat_prompts(default_tokenizer, 24)
    before = _preemptions(preempting_engine)
    completions = generate(preempting_engine, prompts, soft_params(32, **knobs))
    assert _preemptions(preempting_engine) > before, "the KV cache was meant to force preemptions"
    unpreempted = generate(default_engine, prompts, soft_params(32, **knobs))
    for prompt_ids, completion, other in zip(prompts, completions, unpreempted):
        trace, _ = assert_replays(default_hf_model, prompt_ids, completion)
        assert len(trace) == 20
        _assert_greedy_after(default_hf_model, prompt_ids, completion, trace, params, len(trace))
        assert list(completion.token_ids) == list(other.token_ids)
        for entry, other_entry in zip(trace, soft_trace(other)):
            recorded, expected = torch.tensor(entry["latent"]), torch.tensor(other_entry["latent"])
            assert float((recorded - expected).norm() / expected.norm()) <= 1e-5
