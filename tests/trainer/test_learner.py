"""One learner rank in this process (gloo, world size 1) on the tiny model: mixed precision
computes in bf16 but keeps float32 weights and AdamW state, and moves the weights."""

import json
import math
import random
import socket

import pytest
import torch
from torch.distributed.tensor import DTensor

from trainer.grpo import GRPOLossConfig
from trainer.learner import Learner
from trainer.policy import ReplayBatch
from trainer.settings import LearnerConfig, LoraConfig
from vllm_soft.params import SoftThinkingParams


def _batch() -> tuple[ReplayBatch, list[float], list[list[float]]]:
    rng = random.Random(0)
    prompts, responses = [], []
    for _ in range(2):
        prompt = [rng.randrange(100, 4000) for _ in range(rng.randint(5, 9))]
        for _ in range(4):
            prompts.append(prompt)
            responses.append([rng.randrange(100, 4000) for _ in range(rng.randint(2, 8))])
    advantages = [1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5]
    return ReplayBatch(prompts, responses, [[] for _ in responses]), advantages, [[-5.0] * len(r) for r in responses]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@pytest.mark.parametrize("mixed_precision", [False, True])
def test_a_step_keeps_float32_state_and_moves_weights(tiny_model_path, mixed_precision):
    config = LearnerConfig(num_ranks=1, num_cpus_per_rank=1, micro_batch_size=4, learning_rate=1e-3,
                           mixed_precision=mixed_precision)
    learner = Learner(config, GRPOLossConfig(), str(tiny_model_path), 0, 1, "127.0.0.1", _free_port(), seed=0)
    try:
        before = {n: _local(p).detach().clone() for n, p in learner.policy.named_parameters()}
        batch, advantages, rollout = _batch()
        with torch.no_grad():
            logprobs, mask = learner.policy(batch)
        assert logprobs.dtype == torch.float32 and torch.isfinite(logprobs[mask]).all()
        totals = learner.train_step(batch, advantages, rollout, 2, sum(len(r) for r in batch.response_ids))
        assert totals["tokens"] == sum(len(r) for r in batch.response_ids) and totals["grad_norm"] > 0
        moved = 0
        for name, parameter in learner.policy.named_parameters():
            assert _local(parameter).dtype == torch.float32, name
            moved += not torch.equal(_local(parameter), before[name])
        assert moved == len(before)  # AdamW moves every weight that got a gradient
        for state in learner.optimizer.state.values():
            assert _local(state["exp_avg"]).dtype == torch.float32
    finally:
        learner.shutdown()


def test_mixed_precision_logprobs_are_the_float32_ones_to_bf16_rounding(tiny_model_path):
    batch = _batch()[0]
    results = []
    for mixed_precision in (False, True):
        config = LearnerConfig(num_ranks=1, num_cpus_per_rank=1, mixed_precision=mixed_precision)
        learner = Learner(config, GRPOLossConfig(), str(tiny_model_path), 0, 1, "127.0.0.1", _free_port(), seed=0)
        with torch.no_grad():
            results.append(learner.policy(batch))
        learner.shutdown()
    (full, mask), (mixed, _) = results
    gap = (full - mixed)[mask].abs()
    assert 0 < float(gap.max()) < 0.1  # bf16 did run, and only rounding separates them


def test_lora_trains_adapters_only_against_the_adapter_free_reference(tiny_model_path):
    config = LearnerConfig(num_ranks=1, num_cpus_per_rank=1, micro_batch_size=8, learning_rate=1e-2,
                           lora=LoraConfig(rank=4, alpha=8.0, target_modules=["q_proj", "v_proj"]))
    learner = Learner(config, GRPOLossConfig(beta=0.1), str(tiny_model_path), 0, 1, "127.0.0.1", _free_port(), seed=0)
    try:
        assert learner.reference is None  # the reference is the policy with its adapters off
        before = {n: _local(p).detach().clone() for n, p in learner.policy.named_parameters()}
        batch, advantages, rollout = _batch()
        tokens = sum(len(r) for r in batch.response_ids)
        first = learner.train_step(batch, advantages, rollout, 1, tokens)
        second = learner.train_step(batch, advantages, rollout, 1, tokens)
        assert first["kl_sum"] == 0.0  # B = 0 at the start: the policy is the reference
        assert second["kl_sum"] > 0.0
        for name, parameter in learner.policy.named_parameters():
            changed = not torch.equal(_local(parameter), before[name])
            assert changed == ("lora_" in name), name
    finally:
        learner.shutdown()


def test_soft_step_and_token_gaps_are_counted_apart(tiny_model_path):
    """Rollout log-probs 0.3 off at soft-step actions and 0.1 off at tokens: the learner's
    totals give each its own mean gap (the step's own log-probs, before its update)."""
    config = LearnerConfig(num_ranks=1, num_cpus_per_rank=1, micro_batch_size=8, learning_rate=1e-3)
    learner = Learner(config, GRPOLossConfig(), str(tiny_model_path), 0, 1, "127.0.0.1", _free_port(), seed=0)
    try:
        batch, advantages, _ = _batch()
        batch.soft_steps = [[{"position": 0, "token_ids": [r[0], r[0] + 1], "weights": [0.75, 0.25],
                              "log_weights": [math.log(0.75), math.log(0.25)], "draws": None, "emitted": r[0],
                              "logprob": -0.5, "end_reason": None, "entropy": 1.0}] for r in batch.response_ids]
        batch.knobs = SoftThinkingParams(noise="none")
        with torch.no_grad():
            logprobs, _ = learner.policy(batch)
        rollout = [[float(logprobs[i, p]) + (0.3 if p == 0 else 0.1) for p in range(len(r))]
                   for i, r in enumerate(batch.response_ids)]
        tokens = sum(len(r) for r in batch.response_ids)
        totals = learner.train_step(batch, advantages, rollout, 1, tokens)
        assert totals["soft_tokens"] == len(batch.response_ids)
        assert totals["logprob_gap_soft_sum"] / totals["soft_tokens"] == pytest.approx(0.3, abs=1e-5)
        token_gap = (totals["logprob_gap_sum"] - totals["logprob_gap_soft_sum"]) / (tokens - totals["soft_tokens"])
        assert token_gap == pytest.approx(0.1, abs=1e-5)
    finally:
        learner.shutdown()


def test_gate_mode_trains_the_gate_at_its_own_rates_and_saves_it_beside_the_weights(tiny_model_path, tmp_path):
    """AdamW's first step moves each weight by about its group's learning rate
    (|m / sqrt(v)| ~ 1 where the gradient is well above eps): model 1e-6, gate layers 1e-4,
    retention 1e-3. The gate is the model folder's (an open one, so that it matters); the
    hidden share is its own, the checksum covers it and a checkpoint carries it trained."""
    import shutil

    from rollout.weights import parameter_checksum
    from vllm_soft.gate import GATE_PREFIX, GateSettings, fresh_gate, gate_state_dict, load_gate, save_gate

    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    hidden = json.loads((model / "config.json").read_text())["hidden_size"]
    settings = GateSettings(retention_min=0.3, retention_max=0.9, init_std=0.3, seed=5)
    save_gate(model, fresh_gate(hidden, settings), settings)
    config = LearnerConfig(num_ranks=1, num_cpus_per_rank=1, micro_batch_size=8, learning_rate=1e-6,
                           gate_learning_rate=1e-4, gate_lambda_learning_rate=1e-3)
    learner = Learner(config, GRPOLossConfig(), str(model), 0, 1, "127.0.0.1", _free_port(), seed=0, gate=True)
    try:
        batch, advantages, _ = _batch()
        batch.knobs = SoftThinkingParams(mode="gate", noise="none")
        batch.soft_steps = [[{"position": 0, "token_ids": [r[0], r[0] + 1], "weights": [0.75, 0.25],
                              "log_weights": [math.log(0.75), math.log(0.25)], "draws": None, "emitted": r[0],
                              "logprob": -0.5, "end_reason": None, "entropy": 1.0}] for r in batch.response_ids]
        before = {n: _local(p).detach().clone() for n, p in learner.policy.named_parameters()}
        assert torch.equal(before[f"{GATE_PREFIX}lambda"], fresh_gate(hidden, settings).lambda_H)
        tokens = sum(len(r) for r in batch.response_ids)
        totals = learner.train_step(batch, advantages, [[-5.0] * len(r) for r in batch.response_ids], 1, tokens)
        # a = u^r, u in [0.3, 0.9], r = sigmoid(W_r e) in (0, 1): sqrt(1 - a^2) well inside (0, 1).
        assert totals["gated_inputs"] == len(batch.response_ids)
        assert 0.1 < totals["hidden_share_sum"] / totals["gated_inputs"] < 0.95
        steps = {n: float((_local(p).detach() - before[n]).abs().max()) for n, p in learner.policy.named_parameters()}
        assert steps[f"{GATE_PREFIX}lambda"] == pytest.approx(1e-3, rel=0.05)
        for name in ("weight_r", "bias_r", "weight_i", "bias_i"):
            assert steps[f"{GATE_PREFIX}{name}"] == pytest.approx(1e-4, rel=0.05), name
        model_steps = [step for name, step in steps.items() if not name.startswith(GATE_PREFIX)]
        assert max(model_steps) == pytest.approx(1e-6, rel=0.05)

        state = learner.full_state_dict()
        trained = {n.removeprefix(GATE_PREFIX): t for n, t in state.items() if n.startswith(GATE_PREFIX)}
        assert all(t.dtype == torch.float32 for t in trained.values())
        state.pop("lm_head.weight", None)  # tied: the engine holds it once
        assert learner.weights_checksum() == parameter_checksum(state.values())
        model_only = parameter_checksum(t for n, t in state.items() if not n.startswith(GATE_PREFIX))
        assert learner.weights_checksum()[0] == model_only[0] + sum(t.numel() for t in trained.values())

        folder = tmp_path / "step"
        folder.mkdir()
        learner.save(str(folder), str(model))
        saved, saved_settings, fresh = load_gate(folder / "model", hidden)
        assert not fresh and saved_settings == settings
        for name, tensor in gate_state_dict(saved).items():
            assert torch.equal(tensor, trained[name]), name
    finally:
        learner.shutdown()


def test_hidden_mode_recomputes_the_latents_and_trains_through_them(tiny_model_path):
    """Mode 'hidden': the learner recomputes each prompt's latents in K passes (under FSDP,
    several forwards before one backward), places them at the latent steps (which carry no
    log-probability), reports their largest gap to the recorded ones, and trains every
    weight from the tokens after them."""
    from transformers import AutoModelForCausalLM

    from trainer.policy import latent_decoder
    from vllm_soft.replay import coconut_latents

    config = LearnerConfig(num_ranks=1, num_cpus_per_rank=1, micro_batch_size=8, learning_rate=1e-3)
    learner = Learner(config, GRPOLossConfig(), str(tiny_model_path), 0, 1, "127.0.0.1", _free_port(), seed=0)
    try:
        batch, advantages, _ = _batch()
        latent_steps = 2
        batch.response_ids = [[101, 102] + r for r in batch.response_ids]
        prompts = list(dict.fromkeys(map(tuple, batch.prompt_ids)))
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)  # the rollout's weights
        with torch.no_grad():
            recorded = coconut_latents(latent_decoder(model), model.get_input_embeddings(),
                                       [list(p) for p in prompts], latent_steps, False)
        batch.knobs = SoftThinkingParams(mode="hidden", noise="none", max_soft_steps=latent_steps)

        def steps(latents_KH, response):
            return [{"position": k, "token_ids": [response[k]], "weights": [1.0], "log_weights": [0.0], "draws": None,
                     "emitted": response[k], "logprob": None, "end_reason": None if k < latent_steps - 1 else "budget",
                     "entropy": 0.0, "latent": latents_KH[k].double().tolist()} for k in range(latent_steps)]

        batch.soft_steps = [steps(recorded[prompts.index(tuple(p))], r) for p, r in zip(batch.prompt_ids, batch.response_ids)]
        with torch.no_grad():
            logprobs, _ = learner.policy(batch)
        assert (logprobs[:, :latent_steps] == 0).all(), "latent steps have no log-probability"
        assert learner.policy.latent_replay_gap <= 1e-6, "the same weights give the same latents"
        batch.soft_steps[-1] = steps(2 * recorded[prompts.index(tuple(batch.prompt_ids[-1]))], batch.response_ids[-1])
        rollout = [[float(v) for v in logprobs[i, : len(r)]] for i, r in enumerate(batch.response_ids)]
        before = {n: _local(p).detach().clone() for n, p in learner.policy.named_parameters()}
        totals = learner.train_step(batch, advantages, rollout, 1, sum(len(r) for r in batch.response_ids))
        assert totals["latent_replay_gap"] == pytest.approx(0.5, abs=1e-5), "a recorded latent twice the policy's: |h - 2h| / |2h|"
        assert totals["grad_norm"] > 0
        assert all(not torch.equal(_local(p), before[n]) for n, p in learner.policy.named_parameters())
    finally:
        learner.shutdown()
