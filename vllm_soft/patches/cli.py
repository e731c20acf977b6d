"""``vllm serve MODEL --soft-thinking [--soft-thinking-<knob> VALUE ...]``.

Why: server-level soft thinking should be one flag, with its defaults listed in
``vllm serve --help``. What: wraps ``EngineArgs.add_cli_args`` (adds the flag group;
vLLM loads plugins just before it builds the parser, for exactly this) and
``EngineArgs.from_cli_args`` (turns the knob flags into ``additional_config["soft_thinking"]``,
the one place engines read them, and ``--soft-thinking-requests`` into
``additional_config["soft_thinking_requests"]``, default ``all``: a server's clients send
no extra fields, so every request is soft unless it opts out; and enables prompt
embeddings unless the engine is eager, so compiled graphs accept mixtures). When it can
go: if vLLM lets general plugins declare CLI arguments.
"""

import argparse
import functools
import typing
from collections.abc import Callable
from typing import Any

from vllm_soft.log import logger
from vllm_soft.params import EXTRA_ARGS_KEY, KNOBS, REQUESTS_KEY, SoftThinkingParams, knob_docs


def _token(value: str) -> str | int:
    """A token knob's flag value: an id if it is digits, else the token string."""
    return int(value) if value.isdigit() else value


def _flag_type(knob: str) -> tuple[Callable[[str], Any], list[str] | None]:
    """(argparse type, choices) of a knob's flag, from its field's annotation."""
    annotation = typing.get_type_hints(SoftThinkingParams)[knob]
    if knob in ("think_end", "latent_token"):
        return _token, None
    if typing.get_origin(annotation) is typing.Literal:
        return str, list(typing.get_args(annotation))
    if annotation is bool:
        return str, ["true", "false"]
    if int in (annotation, *typing.get_args(annotation)):
        return int, None
    return float, None


def add_soft_thinking_args(parser: argparse.ArgumentParser) -> None:
    """The ``--soft-thinking`` flag group; knob flags default to None (built-in default)."""
    group = parser.add_argument_group(
        "Soft thinking (vllm-soft)",
        "Soft requests feed back probability-weighted token mixtures during their thinking span. With "
        "--soft-thinking every request is soft unless it sends vllm_xargs {'soft_thinking': 0}. "
        "The --soft-thinking-<knob> flags set the server defaults; a request's own knobs override them.",
    )
    group.add_argument("--soft-thinking", action="store_true", help="enable soft thinking on this engine")
    group.add_argument(
        "--soft-thinking-requests",
        choices=["all", "opt-in"],
        default="all",
        help="all: every request is soft unless it opts out ('soft_thinking': 0); opt-in: only requests "
        "that send 'soft_thinking' are soft (default: all)",
    )
    docs = knob_docs()
    defaults = SoftThinkingParams()
    for knob in sorted(KNOBS):
        flag_type, choices = _flag_type(knob)
        group.add_argument(
            f"--soft-thinking-{knob.replace('_', '-')}",
            type=flag_type,
            choices=choices,
            default=None,
            help=f"{docs[knob]} (default: {getattr(defaults, knob)})",
        )


def soft_thinking_config(args: argparse.Namespace) -> dict | None:
    """Engine defaults from parsed flags, or None when soft thinking was not asked for."""
    knobs = {k: getattr(args, f"soft_thinking_{k}") for k in KNOBS if getattr(args, f"soft_thinking_{k}", None) is not None}
    if not getattr(args, "soft_thinking", False) and not knobs:
        return None
    SoftThinkingParams().with_overrides(knobs)  # fail at start-up, naming the flag's knob
    return knobs


def apply() -> None:
    from vllm.engine.arg_utils import EngineArgs

    add_cli_args = EngineArgs.add_cli_args
    from_cli_args = EngineArgs.from_cli_args.__func__

    @functools.wraps(add_cli_args)
    def add_cli_args_(parser, *args, **kwargs):
        parser = add_cli_args(parser, *args, **kwargs)
        add_soft_thinking_args(parser)
        return parser

    @functools.wraps(from_cli_args)
    def from_cli_args_(cls, args):
        engine_args = from_cli_args(cls, args)
        knobs = soft_thinking_config(args)
        if knobs is not None:
            config = dict(engine_args.additional_config or {})
            config[EXTRA_ARGS_KEY] = {**config.get(EXTRA_ARGS_KEY, {}), **knobs}
            config.setdefault(REQUESTS_KEY, getattr(args, "soft_thinking_requests", "all").replace("-", "_"))
            engine_args.additional_config = config
            if not engine_args.enforce_eager and not engine_args.enable_prompt_embeds:
                logger.info("vllm-soft: enabling prompt embeddings so compiled graphs take soft inputs")
                engine_args.enable_prompt_embeds = True
        return engine_args

    EngineArgs.add_cli_args = staticmethod(add_cli_args_)
    EngineArgs.from_cli_args = classmethod(from_cli_args_)
