"""Learner update time alone: shared-prompt packing against one padded row per sequence.

    .venv/bin/python benchmarks/learner_step.py [--prompts 8] [--group-size 8] [--updates 3]

One ``trainer.learner.Learner`` rank in this process (gloo, world size 1, 2 threads, the arith
configs' learner: float32 weights, bf16 compute, micro-batch 16) runs GRPO updates on a
synthetic batch shaped like the arith runs': prompts of 60-80 tokens, G responses of 40-64
tokens each. Each variant does a warm-up update, then ``--updates`` timed ones; the median
is reported, with the ratio to the padded baseline measured in the same run.
"""

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from trainer.grpo import GRPOLossConfig
from trainer.learner import Learner
from trainer.policy import ReplayBatch
from trainer.settings import LearnerConfig
from vllm_soft import models

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_batch(prompts: int, group_size: int, seed: int = 0) -> tuple[ReplayBatch, list[float], list[list[float]]]:
    rng = random.Random(seed)
    prompt_ids, response_ids = [], []
    for _ in range(prompts):
        prompt = [rng.randrange(100, 40000) for _ in range(rng.randint(60, 80))]
        for _ in range(group_size):
            prompt_ids.append(prompt)
            response_ids.append([rng.randrange(100, 40000) for _ in range(rng.randint(40, 64))])
    advantages = [rng.gauss(0.0, 1.0) for _ in response_ids]
    rollout = [[-2.0] * len(r) for r in response_ids]
    return ReplayBatch(prompt_ids, response_ids, [[] for _ in response_ids]), advantages, rollout


def time_updates(share_prompts: bool, args, port: int) -> list[float]:
    config = LearnerConfig(num_ranks=1, num_cpus_per_rank=2, micro_batch_size=16, learning_rate=1e-5,
                           mixed_precision=True, share_prompts=share_prompts)
    learner = Learner(config, GRPOLossConfig(), str(models.fetch(args.model)), 0, 1, "127.0.0.1", port, seed=0)
    batch, advantages, rollout = synthetic_batch(args.prompts, args.group_size)
    micro = -(-len(advantages) // config.micro_batch_size)
    tokens = sum(len(r) for r in batch.response_ids)
    seconds = []
    for update in range(args.updates + 1):
        start = time.perf_counter()
        learner.train_step(batch, advantages, rollout, micro, tokens)
        seconds.append(time.perf_counter() - start)
        print(f"share_prompts={share_prompts} update {update}: {seconds[-1]:.1f} s", flush=True)
    learner.shutdown()
    return seconds[1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--updates", type=int, default=3)
    args = parser.parse_args()
    padded = statistics.median(time_updates(False, args, 29511))
    packed = statistics.median(time_updates(True, args, 29512))
    result = {"prompts": args.prompts, "group_size": args.group_size, "padded_s": padded, "packed_s": packed,
              "ratio": packed / padded}
    print("| layout | seconds per update | ratio |\n|---|---:|---:|")
    print(f"| one padded row per sequence | {padded:.1f} | 1.00x |")
    print(f"| shared-prompt packing | {packed:.1f} | {packed / padded:.2f}x |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learner_step.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
