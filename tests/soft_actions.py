"""Every soft action the learner must replay (what a step's log-probability scores), as
request knobs: shared by the default model's replay test (tests/trainer/test_policy.py) and
the family matrix (tests/vllm_soft/test_families.py)."""

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
