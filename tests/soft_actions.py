"""Every soft action the learner must replay (what a step's log-probability scores), as
request knobs: shared by the default model's replay test (tests/trainer/test_policy.py) and
the family matrix (tests/vllm_soft/test_families.py), and how a replay is measured."""

import torch

from trainer.grpo import logprob_gap
from trainer.policy import ReplayBatch, ReplayPolicy
from vllm_soft.gate import fresh_gate

SOFT = {"emit": "sample", "noise": "none", "max_soft_steps": 6}
"""What every soft action shares; an action's own knobs (its noise) override these."""
SOFT_ACTIONS = {
    "discrete": None,
    "token": {**SOFT, "mode": "replace"},
    "token, add": {**SOFT, "mode": "add", "scale": 0.7},
    "concrete, argmax emission": {"mode": "replace", "noise": "gumbel", "tau": 0.5, "max_soft_steps": 6},
    "dirichlet, add": {**SOFT, "mode": "add", "noise": "dirichlet", "alpha": 2.0},
    "dirichlet, tiny concentrations": {**SOFT, "noise": "dirichlet", "alpha": 0.3},
    "token under gumbel noise": {**SOFT, "noise": "gumbel", "tau": 0.5, "action": "token"},
    "multiplex": {**SOFT, "multiplex": 4},
    "multiplex without replacement, uniform, add": {
        **SOFT, "mode": "add", "scale": 0.7, "multiplex": 3, "multiplex_replacement": False, "multiplex_weights": "uniform",
    },
    "gaussian": {**SOFT, "noise": "gaussian", "sigma": 0.5},
    "hrpo gate (fresh)": {**SOFT, "mode": "gate"},
    "coconut latents": {"mode": "hidden", "max_soft_steps": 6},
    "coconut latents, rescaled, latent token": {"mode": "hidden", "max_soft_steps": 4, "rescale_latent": True,
                                                "latent_token": 31},
}
"""Every soft action (what a step's log-probability scores) the learner must replay."""

LATENT_REPLAY_TOLERANCE = 1e-4
"""Relative L2 error of the learner's latents against the engine's: its own latents feed
its next passes, so float32 differences compound over the span (teacher-forced, one latent
is within 1e-5: tests/vllm_soft/test_hidden.py)."""


def replay_gap(model, samples, batch: ReplayBatch) -> tuple[float, torch.Tensor]:
    """Largest |learner - rollout| log-prob over the batch's response tokens, and the mask."""
    # Mode gate: the tests' model folders have no gate, so the engine drew the fresh one.
    gate = fresh_gate(model.config.hidden_size) if batch.knobs.mode == "gate" else None
    policy = ReplayPolicy(model, gate=gate)
    with torch.no_grad():
        logprobs, mask = policy(batch)  # one padded forward for all
    if batch.knobs.mode == "hidden":  # the learner's own latents (sequential passes) against the engine's
        assert all(sum(step["latent"] is not None for step in s.soft_steps) == batch.knobs.max_soft_steps for s in samples)
        assert policy.latent_replay_gap <= LATENT_REPLAY_TOLERANCE
    rollout = torch.zeros_like(logprobs)
    for row, s in enumerate(samples):
        rollout[row, : len(s.rollout_logprobs)] = torch.tensor(s.rollout_logprobs)
    return float(logprob_gap(logprobs, rollout, mask)), mask
