"""Every soft action the learner must replay (what a step's log-probability scores), as
request knobs: shared by the default model's replay test (tests/trainer/test_policy.py) and
the family matrix (tests/vllm_soft/test_families.py)."""

SOFT = {"emit": "sample", "max_soft_steps": 6}
SOFT_ACTIONS = {
    "discrete": None,
    "token": {"mode": "replace", **SOFT},
    "token, add": {"mode": "add", "scale": 0.7, **SOFT},
    "concrete, argmax emission": {"mode": "replace", "noise": "gumbel", "tau": 0.5, "max_soft_steps": 6},
    "dirichlet, add": {"mode": "add", "noise": "dirichlet", "alpha": 2.0, **SOFT},
    "dirichlet, tiny concentrations": {"noise": "dirichlet", "alpha": 0.3, **SOFT},
    "token under gumbel noise": {"noise": "gumbel", "tau": 0.5, "action": "token", **SOFT},
    "multiplex": {"multiplex": 4, **SOFT},
    "multiplex without replacement, uniform, add": {
        "mode": "add", "scale": 0.7, "multiplex": 3, "multiplex_replacement": False, "multiplex_weights": "uniform", **SOFT,
    },
    "gaussian": {"noise": "gaussian", "sigma": 0.5, **SOFT},
    "hrpo gate (fresh)": {"mode": "gate", **SOFT},
    "coconut latents": {"mode": "hidden", "max_soft_steps": 6},
    "coconut latents, rescaled, latent token": {"mode": "hidden", "max_soft_steps": 4, "rescale_latent": True,
                                                "latent_token": 31},
}
"""Every soft action (what a step's log-probability scores) the learner must replay."""

LATENT_REPLAY_TOLERANCE = 1e-4
"""Relative L2 error of the learner's latents against the engine's: its own latents feed
its next passes, so float32 differences compound over the span (teacher-forced, one latent
is within 1e-5: tests/vllm_soft/test_hidden.py)."""
