"""``python -m rollout.eval ...``: see ``rollout.eval.cli``."""

from rollout.eval.cli import main

if __name__ == "__main__":
    main()
