"""The ``vllm-soft`` command: ``fetch`` a model, ``generate`` with it, ``serve`` it, ``eval`` it."""

import argparse
import sys

from vllm_soft import models
from vllm_soft.eval.cli import build_parser as build_eval_parser
from vllm_soft.eval.cli import run as run_eval
from vllm_soft.generate import add_generate_args, run_generate


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
    build_eval_parser(commands.add_parser("eval", help="accuracy, pass@k and length per decoding mode (python -m vllm_soft.eval)"))
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return models.run_fetch(args.name)
    if args.command == "eval":
        run_eval(args)
        return 0
    run_generate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
