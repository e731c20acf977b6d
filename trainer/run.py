"""Train a soft-thinking (or token) policy with GRPO on Ray.

    python trainer/run.py --config configs/smoke.yaml [key=value ...]
    python trainer/run.py --resume RUN_DIR [key=value ...]
    ray job submit --working-dir . -- python trainer/run.py --config configs/smoke.yaml

Joins the Ray cluster in RAY_ADDRESS (set under ``ray job submit``) or starts a local one.
The run folder (``output_dir``) gets config.yaml, metrics.jsonl, tensorboard/ and
checkpoints/; ``python -m trainer.report RUN_DIR`` draws the curves.
"""

import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.config import config_arg_parser, load_config  # noqa: E402
from trainer import checkpoints  # noqa: E402
from trainer.settings import TrainConfig  # noqa: E402


def required_cpus(config: TrainConfig) -> int:
    return (config.pool.num_workers * config.pool.num_cpus_per_worker
            + config.learner.num_ranks * config.learner.num_cpus_per_rank)


def main(argv=None) -> None:
    parser = config_arg_parser(__doc__.split("\n")[0])
    parser.add_argument("--resume", type=Path, default=None, help="continue RUN_DIR from its last complete checkpoint")
    args = parser.parse_args(argv)
    resume_from = None
    if args.resume is not None:
        resume_from = checkpoints.latest(args.resume)
        if resume_from is None:
            parser.error(f"--resume: {args.resume} has no complete checkpoint")
        config = load_config(TrainConfig, args.config or args.resume / "config.yaml", args.overrides)
        run_dir = args.resume
    else:
        if args.config is None:
            parser.error("give --config FILE (or --resume RUN_DIR)")
        config = load_config(TrainConfig, args.config, args.overrides)
        run_dir = Path(config.output_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import ray

    from trainer.loop import train
    from vllm_soft.runtime import configure_cpu_threads

    configure_cpu_threads()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:  # a new local cluster with room for every actor (they take turns: rollout, then learning);
        # "local": never the address a killed run left behind in /tmp/ray, whose cluster is gone
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, required_cpus(config)))
    train(config, run_dir.resolve(), resume_from)


if __name__ == "__main__":
    main()
