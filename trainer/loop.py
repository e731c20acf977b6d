"""The training loop on Ray: rollouts -> rewards -> advantages -> learner step -> weight push.

    RolloutPool (R engines) ──samples──► advantages (group_advantages) ──► Learner x N (FSDP)
          ▲                                                                    │
          └──────────── push: rank 0 gathers, buckets in the object store ─────┘
    every checkpoint_every steps: checkpoint (model folder, DCP shards, loop state)

Steps are numbered from 1; step s uses prompts [(s-1) P, s P) of the shuffled source
(wrapping around) as groups (s-1) P .. s P - 1, and sample i of group g draws the random
stream of (seed, g, i) (``rollout.worker.group_seed``), so a resumed run draws exactly what
the uninterrupted run would have and no two samples of a run share a stream.
"""

import dataclasses
import json
import logging
import random
import socket
import time
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from rollout.config import save_config
from rollout.eval.modes import MODES
from rollout.eval.results import summarize_mode
from rollout.eval.run import sample_mode
from rollout.pool import RolloutPool
from rollout.prompts import format_prompt, load_prompts
from rollout.settings import SamplingConfig
from rollout.summary import summarize
from rollout.worker import GroupRequest
from trainer import checkpoints
from trainer.grpo import group_advantages
from trainer.learner import Learner
from trainer.metrics import MetricsLog
from trainer.policy import ReplayBatch
from trainer.settings import TrainConfig

logger = logging.getLogger(__name__)
PUSH_BUCKET_BYTES = 64 << 20


def training_sampling(config: TrainConfig) -> SamplingConfig:
    """How every training group is sampled; group ids run on across steps, so with one
    base seed the streams never repeat."""
    algorithm = config.algorithm
    return SamplingConfig(
        group_size=algorithm.group_size, temperature=algorithm.temperature, max_tokens=algorithm.max_tokens,
        seed=config.seed, soft_thinking=algorithm.rollout_knobs(),
    )


class LearnerGroup:
    """N learner actors acting as one: every call goes to all ranks."""

    def __init__(self, config: TrainConfig, model_path: str):
        learner = config.learner
        actor = ray.remote(Learner).options(
            num_cpus=learner.num_cpus_per_rank, num_gpus=learner.num_gpus_per_rank,
            resources=dict(learner.resources_per_rank),
        )
        self.ranks = []
        address = None
        for rank in range(learner.num_ranks):
            if address is None:
                # Rank 0's node hosts the rendezvous: ask a probe on the same resources.
                address = ray.get(_free_address.options(
                    num_cpus=0, resources=dict(learner.resources_per_rank)).remote())
            self.ranks.append(actor.remote(learner, config.algorithm.loss, model_path, rank, learner.num_ranks,
                                           address[0], address[1], config.seed, config.algorithm.mode == "gate"))
        ray.get([r.ready.remote() for r in self.ranks])

    def call(self, method: str, *args) -> list:
        return ray.get([getattr(rank, method).remote(*args) for rank in self.ranks])

    def shards(self, items: list) -> list[list]:
        return shards(items, len(self.ranks))

    def micro_batches(self, count: int, micro_batch_size: int) -> int:
        return micro_batches(count, len(self.ranks), micro_batch_size)


def shards(items: list, ranks: int) -> list[list]:
    """``items`` in contiguous, near-equal slices over ``ranks`` (a prompt's group stays
    together, so the learner computes its prompt once)."""
    size, extra = divmod(len(items), ranks)
    bounds = [rank * size + min(rank, extra) for rank in range(ranks + 1)]
    return [items[bounds[r] : bounds[r + 1]] for r in range(ranks)]


def micro_batches(count: int, ranks: int, micro_batch_size: int) -> int:
    """Micro-batches per rank for ``count`` items: every rank runs the same number (at
    least one), enough for its largest share."""
    per_rank = -(-count // ranks)
    return max(1, -(-per_rank // micro_batch_size))


@ray.remote
def _free_address() -> tuple[str, int]:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return ray.util.get_node_ip_address(), sock.getsockname()[1]


def train(config: TrainConfig, run_dir: Path, resume_from: Path | None = None) -> list[dict]:
    """Run (or continue) training; returns the metrics of the steps run here."""
    from transformers import AutoTokenizer

    from vllm_soft.models import resolve_model

    run_start = time.perf_counter()
    base_model = str(resolve_model(config.model))
    start_step, model_path = 1, base_model
    if resume_from is not None:
        state = checkpoints.load_state(resume_from)
        start_step, model_path = state["step"] + 1, str(resume_from / "model")
        _truncate_metrics(run_dir, state["step"])
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    items = load_prompts(config.prompts)
    random.Random(config.seed).shuffle(items)
    prompts = [format_prompt(item, tokenizer, config.format) for item in items]

    engine = dataclasses.replace(config.engine, model=model_path)
    pool = RolloutPool(engine, config.rewards, config.pool)
    learners = LearnerGroup(config, model_path)
    if resume_from is not None:
        learners.call("load", str(resume_from))
    log = MetricsLog(run_dir)
    evaluate = _evaluator(config, tokenizer, pool)
    if evaluate is not None and start_step == 1:
        log.log(0, {**evaluate(), "elapsed_s": time.perf_counter() - run_start})
    results = []
    per_step = config.algorithm.prompts_per_step
    push_dtype = config.engine.dtype if config.engine.dtype in ("float32", "bfloat16", "float16") else None
    bar = tqdm(range(start_step, config.steps + 1), desc="train", unit="step")
    try:
        for step in bar:
            timings = {}
            begin = started = time.perf_counter()
            first = (step - 1) * per_step
            groups = [
                GroupRequest(group_id=first + i, prompt=prompts[(first + i) % len(prompts)],
                             answer=items[(first + i) % len(items)].answer, entry=items[(first + i) % len(items)].entry)
                for i in range(per_step)
            ]
            samples = [s for group in pool.generate(groups, training_sampling(config), progress=False) for s in group]
            timings["rollout_s"] = time.perf_counter() - begin

            rewards = torch.tensor([s.reward for s in samples])
            advantages = group_advantages(rewards, torch.tensor([s.group_id for s in samples]),
                                          scale_by_std=config.algorithm.scale_rewards).tolist()
            begin = time.perf_counter()
            totals = _learner_step(config, learners, samples, advantages)
            timings["learn_s"] = time.perf_counter() - begin

            begin = time.perf_counter()
            buckets = [b for b in learners.call("push_buckets", PUSH_BUCKET_BYTES, push_dtype) if b is not None][0]
            pool.update_weights(buckets, version=step)
            timings["push_s"] = time.perf_counter() - begin
            timings["step_s"] = time.perf_counter() - started  # rollout + learn + push
            checks = {}
            if config.verify_push:
                checks["push_checksum_match"] = _checksums_match(learners.call("weights_checksum")[0], pool.weights_checksums())

            metrics = {**_step_metrics(samples, totals, rewards, timings["rollout_s"]), **timings, **checks}
            if evaluate is not None and (step % config.eval.every == 0 or step == config.steps):
                metrics.update(evaluate())
            if step % config.checkpoint_every == 0 or step == config.steps:
                begin = time.perf_counter()
                folder = checkpoints.partial_folder(run_dir, step)
                learners.call("save", str(folder), base_model)
                checkpoints.complete(folder, {"step": step, "data_position": step * per_step}, config.keep_checkpoints)
                metrics["checkpoint_s"] = time.perf_counter() - begin
            metrics["elapsed_s"] = time.perf_counter() - run_start  # since this process started
            log.log(step, metrics)
            results.append({"step": step, **metrics})
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", gap=f"{metrics['logprob_gap']:.1e}",
                            tok_s=f"{metrics['rollout_tokens_per_s']:.0f}")
    finally:
        log.close()
        pool.shutdown()
        learners.call("shutdown")
    return results


def _checksums_match(learner: tuple, engines: list[tuple]) -> bool:
    """Equal counts, sums and sums of squares (float64 summation order differs: rel. 1e-9)."""
    def close(a, b):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))

    return all(e[0] == learner[0] and close(e[1], learner[1]) and close(e[2], learner[2]) for e in engines)


def _evaluator(config: TrainConfig, tokenizer, pool: RolloutPool):
    """Held-out accuracy with the evaluation harness's modes and definition of correct
    (``rollout.eval``): greedy token decoding (the same for every training mode) and, for
    soft modes, noise-free soft thinking with the run's knobs and argmax emission (no
    multiplex draws: the full mixture they sample from)."""
    if config.eval.num_prompts == 0:
        return None
    source = dataclasses.replace(config.prompts, seed=config.eval.seed, size=config.eval.num_prompts)
    items = load_prompts(source)
    groups = [GroupRequest(group_id=-1 - i, prompt=format_prompt(item, tokenizer, config.format), answer=item.answer,
                           entry=item.entry) for i, item in enumerate(items)]
    modes = {"eval_accuracy": MODES["greedy"]}
    knobs = config.algorithm.rollout_knobs()
    if knobs is not None:
        overrides = {f"soft_thinking.{knob}": value for knob, value in {**knobs, "emit": "argmax", "noise": "none", "multiplex": 0}.items()}
        modes["eval_soft_accuracy"] = MODES["soft"].with_overrides(overrides)

    def evaluate() -> dict:
        results = {}
        for name, mode in modes.items():
            sampled = sample_mode(pool, groups, mode, 1, config.eval.max_tokens, config.eval.seed, progress=False)
            results[name] = summarize_mode(sampled, 0.0)["pass@1"]
        return results

    return evaluate


def _learner_step(config: TrainConfig, learners: LearnerGroup, samples, advantages) -> dict:
    rank_shards = learners.shards(list(range(len(samples))))
    micro = learners.micro_batches(len(samples), config.learner.micro_batch_size)
    num_tokens = sum(len(s.response_token_ids) for s in samples)
    calls = []
    for rank, shard in zip(learners.ranks, rank_shards):
        chosen = [samples[i] for i in shard]
        calls.append(rank.train_step.remote(
            ReplayBatch.from_samples(chosen, config.algorithm.temperature), [advantages[i] for i in shard],
            [s.rollout_logprobs for s in chosen], micro, num_tokens,
        ))
    per_rank = ray.get(calls)
    totals = {}
    for rank_totals in per_rank:
        for key, value in rank_totals.items():
            if key in ("ratio_max", "grad_norm", "learner_s", "latent_replay_gap"):
                totals[key] = max(totals.get(key, 0.0), value)
            else:
                totals[key] = totals.get(key, 0.0) + value
    return totals


def _step_metrics(samples, totals: dict, rewards: torch.Tensor, rollout_s: float) -> dict:
    summary = summarize(samples, rollout_s)
    tokens = max(totals["tokens"], 1.0)
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "accuracy": summary["accuracy"],
        "response_length": summary["mean_response_tokens"],
        "soft_step_fraction": summary["soft_step_fraction"],
        "entropy": _mean_soft_entropy(samples),
        "loss": totals["loss"],
        "kl": totals["kl_sum"] / tokens,
        "clip_fraction": totals["clip_fraction_sum"] / tokens,
        "ratio_mean": totals["ratio_mean_sum"] / tokens,
        "ratio_max": totals["ratio_max"],
        "tis_weight_mean": totals["tis_weight_mean_sum"] / tokens,
        "logprob_gap": totals["logprob_gap_sum"] / tokens,
        # Soft-step densities and token log-probs replay to different precision: each its own mean.
        "logprob_gap_soft": _ratio(totals["logprob_gap_soft_sum"], totals["soft_tokens"]),
        "logprob_gap_token": _ratio(totals["logprob_gap_sum"] - totals["logprob_gap_soft_sum"],
                                    totals["tokens"] - totals["soft_tokens"]),
        "grad_norm": totals["grad_norm"],
        # HRPO: how much of the gated inputs is the latent, mean sqrt(1 - a^2) (None without a gate).
        "hidden_share": _ratio(totals.get("hidden_share_sum", 0.0), totals.get("gated_inputs", 0.0)),
        # Coconut: largest relative error of the learner's latents against the rollout's (None without).
        "latent_replay_gap": totals.get("latent_replay_gap"),
        "rollout_tokens_per_s": summary["tokens_per_s"],
    }


def _ratio(total: float, count: float) -> float | None:
    """total / count, or None where nothing was counted."""
    return total / count if count > 0 else None


def _mean_soft_entropy(samples) -> float | None:
    values = [step["entropy"] for s in samples for step in s.soft_steps if "entropy" in step]
    return sum(values) / len(values) if values else None


def _truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop logged steps after the checkpoint a run resumes from (they will run again)."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in kept))
