"""Soft-thinking knobs: parsing of both request forms, and errors that name the knob."""

import pytest

from vllm_soft.params import (
    KNOBS,
    RESOLVED_FIELDS,
    SoftThinkingParamError,
    SoftThinkingParams,
    engine_defaults,
    request_overrides,
    resolve_randomness,
    resolve_tokens,
)

BAD_KNOBS = [
    ("top_k", 0, ">= 1"),
    ("top_k", 2.5, ">= 1"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_p", 1.5, "(0, 1]"),
    ("min_p", -0.1, "[0, 1)"),
    ("min_p", 1.0, "[0, 1)"),
    ("temperature", 0.0, "> 0"),
    ("mode", "mix", "replace, add"),
    ("emit", "greedy", "argmax, sample"),
    ("noise", "laplace", "none, dirichlet, gumbel, gaussian"),
    ("sigma", 0.0, "> 0"),
    ("alpha", -1.0, "> 0"),
    ("tau", 0, "> 0"),
    ("entropy_threshold", -0.5, ">= 0"),
    ("patience", 0, ">= 1"),
    ("max_soft_steps", 0, ">= 1"),
    ("scale", float("nan"), "finite"),
    ("think_end", 3.5, "token string"),
    ("multiplex", -1, ">= 0"),
    ("multiplex_replacement", 2, "true or false"),
    ("multiplex_weights", "equal", "probability, uniform"),
    ("action", "draws", "sampled, token"),
    ("latent_token", [1], "token string"),
    ("rescale_latent", "yes", "true or false"),
]


@pytest.mark.parametrize("knobs, knob, named", [
    ({"mode": "hidden"}, "max_soft_steps", "needs max_soft_steps"),
    ({"mode": "hidden", "max_soft_steps": -1}, "max_soft_steps", ">= 0"),
    ({"mode": "hidden", "max_soft_steps": 4, "emit": "sample"}, "emit", "'argmax' with mode 'hidden'"),
    ({"mode": "hidden", "max_soft_steps": 4, "noise": "gumbel"}, "noise", "'none' with mode 'hidden'"),
    ({"mode": "hidden", "max_soft_steps": 4, "multiplex": 2}, "multiplex", "0 with mode 'hidden'"),
])
def test_hidden_mode_refuses_what_latent_steps_cannot_honour(knobs, knob, named):
    with pytest.raises(SoftThinkingParamError) as excinfo:
        SoftThinkingParams().with_overrides(knobs)
    assert excinfo.value.parameter == knob and named in str(excinfo.value)


def test_hidden_mode_takes_zero_latent_steps_and_other_modes_do_not():
    assert SoftThinkingParams(mode="hidden", max_soft_steps=0).max_soft_steps == 0
    assert SoftThinkingParams(mode="hidden", max_soft_steps=3, rescale_latent=1).rescale_latent is True
    with pytest.raises(SoftThinkingParamError, match=">= 1"):
        SoftThinkingParams(max_soft_steps=0)


@pytest.mark.parametrize("knobs, named", [
    ({"multiplex": 2, "noise": "gumbel"}, "noise ('gumbel')"),
    ({"multiplex": 5, "top_k": 4, "multiplex_replacement": False}, "<= top_k (4)"),
])
def test_knobs_that_exclude_each_other_are_an_error_naming_both(knobs, named):
    with pytest.raises(SoftThinkingParamError, match="soft_thinking.multiplex") as excinfo:
        SoftThinkingParams().with_overrides(knobs)
    assert excinfo.value.parameter == "multiplex" and named in str(excinfo.value)


def test_multiplex_replacement_takes_the_forms_clients_send():
    """vllm_xargs carries 0/1, flags carry strings."""
    for value, expected in ((0, False), ("1", True), ("false", False), (True, True)):
        assert SoftThinkingParams(multiplex_replacement=value).multiplex_replacement is expected


@pytest.mark.parametrize("knob, value, allowed", BAD_KNOBS)
def test_bad_knob_names_itself_and_the_allowed_range(knob, value, allowed):
    with pytest.raises(SoftThinkingParamError) as excinfo:
        SoftThinkingParams().with_overrides({knob: value})
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.parameter == knob
    assert f"soft_thinking.{knob}" in str(excinfo.value) and allowed in str(excinfo.value)


def test_unknown_knob_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown soft_thinking knob.*'topk'.*valid knobs: action, alpha, emit"):
        SoftThinkingParams().with_overrides({"topk": 3})


def test_request_forms():
    assert request_overrides(None) is None
    assert request_overrides({"other": 1}) is None
    assert request_overrides({"soft_thinking": {}}) == {}
    assert request_overrides({"soft_thinking": {"top_k": 3}, "soft_thinking_mode": "add"}) == {"top_k": 3, "mode": "add"}
    assert request_overrides({"soft_thinking": 1, "soft_thinking_top_k": 4}) == {"top_k": 4}
    assert request_overrides({"soft_thinking_top_p": 0.5}) == {"top_p": 0.5}
    assert request_overrides({"soft_thinking": 0, "soft_thinking_top_k": 4}) is None
    with pytest.raises(ValueError, match="extra_args\\['soft_thinking'\\]"):
        request_overrides({"soft_thinking": [1]})


def test_engine_defaults():
    assert engine_defaults(None) is None
    assert engine_defaults({"other": 1}) is None
    assert engine_defaults({"soft_thinking": {}}) == SoftThinkingParams()
    assert engine_defaults({"soft_thinking": {"top_k": 4}}).top_k == 4
    with pytest.raises(ValueError, match="top_k"):
        engine_defaults({"soft_thinking": {"top_k": -4}})


@pytest.mark.parametrize("knob", ["think_end", "latent_token"])
def test_token_knob_resolution(knob):
    vocab = {"</think>": 7}
    resolve = lambda params: resolve_tokens(params, 10, vocab.get)  # noqa: E731
    assert getattr(resolve(SoftThinkingParams(**{knob: "</think>"})), f"{knob}_id") == 7
    assert getattr(resolve(SoftThinkingParams(**{knob: 3})), f"{knob}_id") == 3
    assert getattr(resolve(SoftThinkingParams()), f"{knob}_id") is None
    for bad in ("<missing>", 10, -1):
        with pytest.raises(SoftThinkingParamError, match=f"{knob} .* not a single token") as excinfo:
            resolve(SoftThinkingParams(**{knob: bad}))
        assert excinfo.value.parameter == knob


@pytest.mark.parametrize("policy, extra_args, top_k", [
    ("all", {}, 4),                                  # an OpenAI client that sends nothing: engine defaults
    ("all", {"soft_thinking": 0}, None),             # opts out
    ("all", {"other": 1}, 4),                        # says nothing about soft thinking
    ("all", {"soft_thinking_top_k": 3}, 3),
    ("opt_in", {}, None),                            # offline default: only requests that ask
    ("opt_in", {"soft_thinking": 1}, 4),
    (None, {}, None),
])
def test_which_requests_are_soft(policy, extra_args, top_k):
    from vllm_soft.patches.frontend import resolve_request_knobs

    config = {"soft_thinking": {"top_k": 4}}
    if policy is not None:
        config["soft_thinking_requests"] = policy
    resolve_request_knobs(extra_args, config, vocab_size=100, tokenizer=None)
    resolved = request_overrides(extra_args)
    if top_k is None:
        assert resolved is None
    else:
        assert resolved["top_k"] == top_k
        assert set(resolved) == KNOBS | RESOLVED_FIELDS, "the complete, resolved set"


def test_think_end_auto_is_the_models_thinking_end_and_null_turns_it_off():
    vocab = {"</think>": 7}
    auto = resolve_tokens(SoftThinkingParams(), 10, vocab.get, model_think_end="</think>")
    assert (auto.think_end, auto.think_end_id) == ("</think>", 7)
    without = resolve_tokens(SoftThinkingParams(), 10, vocab.get, model_think_end=None)
    assert (without.think_end, without.think_end_id) == (None, None)
    for off in (None, "null"):  # flags and vllm_xargs carry the string
        params = resolve_tokens(SoftThinkingParams(think_end=off), 10, vocab.get, model_think_end="</think>")
        assert (params.think_end, params.think_end_id) == (None, None)


@pytest.mark.parametrize("knobs, temperature, n, noise", [
    ({}, 1.0, 4, "gumbel"),                     # a sampling request: randomised soft steps
    ({}, 0.7, 1, "gumbel"),                     # a chat UI's regenerate: n = 1, no seed
    ({}, 0.0, 1, "none"),                       # greedy: Soft Thinking as the paper runs it
    ({"noise": "dirichlet"}, 1.0, 4, "dirichlet"),
    ({"noise": "none", "emit": "sample"}, 1.0, 4, "none"),  # the sampled token is the draw
    ({"multiplex": 3}, 1.0, 4, "none"),         # the draws are the exploration
    ({"mode": "hidden", "max_soft_steps": 2}, 1.0, 4, "none"),  # latents draw nothing; the answer samples
])
def test_a_request_that_samples_gets_random_soft_steps(knobs, temperature, n, noise):
    assert resolve_randomness(SoftThinkingParams(**knobs), temperature, n).noise == noise


def test_n_copies_of_one_soft_span_are_an_error_naming_noise():
    with pytest.raises(SoftThinkingParamError, match="n=4 samples at temperature 1.0 would be 4 copies") as excinfo:
        resolve_randomness(SoftThinkingParams(noise="none"), 1.0, 4)
    assert excinfo.value.parameter == "noise"
    assert resolve_randomness(SoftThinkingParams(noise="none"), 1.0, 1).noise == "none"  # asked for, one sample
    assert resolve_randomness(SoftThinkingParams(noise="none"), 0.0, 4).noise == "none"  # greedy: copies expected


def test_model_think_end_reads_the_tokenizer_and_the_reasoning_parser():
    from transformers import AutoTokenizer

    from vllm_soft import models
    from vllm_soft.patches.frontend import model_think_end

    thinking = AutoTokenizer.from_pretrained(models.fetch("tiny-qwen3"))
    plain = AutoTokenizer.from_pretrained(models.fetch("tiny"))
    assert model_think_end(thinking, None) == "</think>"
    assert model_think_end(thinking, "deepseek_r1") == "</think>"
    assert model_think_end(plain, None) is None
