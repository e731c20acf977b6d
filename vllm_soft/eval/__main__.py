"""``python -m vllm_soft.eval ...``: see ``vllm_soft.eval.cli``."""

from vllm_soft.eval.cli import main

if __name__ == "__main__":
    main()
