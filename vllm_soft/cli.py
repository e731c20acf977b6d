"""The ``vllm-soft`` command: ``fetch`` a model, ``generate`` with it, ``serve`` it, and the
commands other packages add (``eval``, from ``rollout``).

Commands from other packages come through the ``vllm_soft.commands`` entry-point group, so
this package never imports the floors built on it (``rollout``, ``trainer``).
"""

import argparse
import sys
from importlib.metadata import entry_points

from vllm_soft import models
from vllm_soft.generate import add_generate_args, run_generate

COMMANDS_GROUP = "vllm_soft.commands"
"""Entry-point group of further subcommands: each entry is a function taking argparse's
subparsers; it adds its command and sets the default ``run`` (a function of the parsed
arguments) on it."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # everything after it belongs to `vllm serve`
        from vllm_soft.serve import serve

        serve(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="vllm-soft", description="Soft thinking for vLLM.")
    commands = parser.add_subparsers(dest="command", required=True)
    models.add_fetch_command(commands)
    add_generate_args(commands.add_parser("generate", help="answer prompts with vLLM and print the answers"))
    commands.add_parser("serve", help="vLLM's OpenAI server: vllm-soft serve MODEL [--soft-thinking] [vllm serve flags]")
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(commands)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return models.run_fetch(args.name)
    if args.command == "generate":
        run_generate(args)
        return 0
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
