"""Time of one GRPO training step of TRL's GRPOTrainer on CPU, to compare our trainer against.

    .venv/bin/python benchmarks/trl_grpo_step.py [--model smollm2-135m] [--prompts 8] [--group-size 8] [--max-tokens 64] [--steps 2]

One optimizer step = one generation round of prompts x G completions (transformers
``generate``, no vLLM) + one gradient update over them in micro-batches of --micro-batch
sequences (num_iterations = 1: no reuse of old generations). beta = 0 (TRL's default):
no reference model, no KL term. Gradient checkpointing is off (TRL turns it on by default;
our learner does not use it). One untimed warm-up step runs first. Prints one line of JSON
to stdout; TRL's own output goes to stderr.
"""

import argparse
import contextlib
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time

from transformers import TrainerCallback

QUESTION = "What is {a} + {b}? Think step by step inside <think></think>, then give only the final answer inside <answer></answer>."


def make_dataset(rows: int, seed: int):
    """1-digit sums as conversational prompts, with the answer in their own column."""
    from datasets import Dataset

    rng = random.Random(seed)
    pairs = [(rng.randrange(10), rng.randrange(10)) for _ in range(rows)]
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": QUESTION.format(a=a, b=b)}], "answer": str(a + b)} for a, b in pairs
    ])


class StepProbe(TrainerCallback):
    """Per optimizer step: wall time, time in ``GRPOTrainer._generate`` (tokenize, generate,
    decode), completions scored by the reward function and completion tokens generated."""

    def __init__(self):
        self.steps: list[dict] = []
        self.current: dict = {}

    def wrap_generate(self, trainer) -> None:
        inner = trainer._generate

        def timed(prompts):
            start = time.perf_counter()
            out = inner(prompts)
            self.current["generate_s"] += time.perf_counter() - start
            self.current["completion_tokens"] += sum(len(ids) for ids in out[1])  # out[1]: completion_ids
            return out

        trainer._generate = timed

    def reward(self, completions, answer, **kwargs) -> list[float]:
        """1.0 when the completion contains the right number, else 0.0."""
        self.current["completions"] += len(completions)
        texts = [c[0]["content"] for c in completions]
        return [1.0 if re.search(rf"(?<!\d){a}(?!\d)", t) else 0.0 for t, a in zip(texts, answer, strict=True)]

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = {"generate_s": 0.0, "completions": 0, "completion_tokens": 0, "start": time.perf_counter()}

    def on_step_end(self, args, state, control, **kwargs):
        self.current["step_s"] = time.perf_counter() - self.current.pop("start")
        self.steps.append(self.current)


def grpo_config(args, output_dir: str):
    from trl import GRPOConfig

    completions = args.prompts * args.group_size
    if completions % args.micro_batch:
        raise SystemExit(f"--micro-batch {args.micro_batch} must divide prompts x group size = {completions}")
    accumulation = completions // args.micro_batch
    return GRPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        # one optimizer step == one generation batch of prompts x G == one gradient update
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation, num_generations=args.group_size, num_iterations=1,
        max_completion_length=args.max_tokens, temperature=args.temperature,
        beta=0.0, learning_rate=1e-6, gradient_checkpointing=False, use_vllm=False,
        max_steps=args.steps + 1, save_strategy="no", report_to="none", disable_tqdm=True,
    )


def run(args) -> dict:
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_soft.models import resolve_model

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    path = str(resolve_model(args.model))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype))
    probe = StepProbe()
    with tempfile.TemporaryDirectory() as output_dir:
        config = grpo_config(args, output_dir)
        assert config.generation_batch_size == args.prompts * args.group_size
        trainer = trl.GRPOTrainer(
            model=model, reward_funcs=probe.reward, args=config,
            train_dataset=make_dataset(args.prompts * (args.steps + 1), args.seed),
            processing_class=AutoTokenizer.from_pretrained(path), callbacks=[probe],
        )
        probe.wrap_generate(trainer)
        trainer.train()
    timed = probe.steps[1:]  # the first step is the warm-up
    return {
        "trl_version": trl.__version__,
        "model": args.model,
        "step_seconds": [round(s["step_s"], 3) for s in timed],
        "median_step_s": round(statistics.median(s["step_s"] for s in timed), 3),
        "generate_s": round(statistics.median(s["generate_s"] for s in timed), 3),
        "completions_per_step": [s["completions"] for s in timed],
        "completion_tokens_per_step": [s["completion_tokens"] for s in timed],
        "warmup_step_s": round(probe.steps[0]["step_s"], 3),
        "config": vars(args) | {
            "threads": torch.get_num_threads(),
            **{k: getattr(config, k) for k in (
                "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
                "generation_batch_size", "num_generations", "num_iterations", "beta", "loss_type", "scale_rewards",
                "epsilon", "max_grad_norm", "learning_rate", "gradient_checkpointing", "use_vllm", "bf16",
            )},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=8, help="completions per prompt (num_generations)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_completion_length")
    parser.add_argument("--steps", type=int, default=2, help="timed steps, after one untimed warm-up step")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward (as our learner)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs to stdout
        result = run(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
