"""`vllm serve` flags: --soft-thinking and its knob flags become additional_config."""

import pytest

from vllm_soft import plugin


def _engine_args(argv):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    plugin.register()
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    return AsyncEngineArgs.from_cli_args(args)


def test_flags_become_engine_defaults():
    engine_args = _engine_args(
        ["--model", "m", "--soft-thinking", "--soft-thinking-top-k", "4", "--soft-thinking-mode", "add",
         "--soft-thinking-think-end", "</think>"]
    )
    assert engine_args.additional_config["soft_thinking"] == {"top_k": 4, "mode": "add", "think_end": "</think>"}
    assert engine_args.enable_prompt_embeds  # compiled graphs must take embeddings


def test_bare_flag_enables_with_built_in_defaults_and_eager_keeps_token_ids():
    engine_args = _engine_args(["--model", "m", "--soft-thinking", "--enforce-eager"])
    assert engine_args.additional_config["soft_thinking"] == {}
    assert not engine_args.enable_prompt_embeds


def test_a_soft_server_makes_every_request_soft_unless_told_opt_in():
    assert _engine_args(["--model", "m", "--soft-thinking"]).additional_config["soft_thinking_requests"] == "all"
    opt_in = _engine_args(["--model", "m", "--soft-thinking", "--soft-thinking-requests", "opt-in"])
    assert opt_in.additional_config["soft_thinking_requests"] == "opt_in"


def test_without_the_flag_nothing_changes():
    engine_args = _engine_args(["--model", "m"])
    assert not {"soft_thinking", "soft_thinking_requests"} & set(engine_args.additional_config or {})
    assert not engine_args.enable_prompt_embeds


def test_bad_flag_value_names_the_knob():
    with pytest.raises(ValueError, match="soft_thinking.top_p"):
        _engine_args(["--model", "m", "--soft-thinking-top-p", "2"])
