"""Training configs: two settings that disagree are an error naming both."""

from pathlib import Path

import pytest

from rollout.settings import EngineConfig
from trainer.settings import AlgorithmConfig, TrainConfig


def test_a_mode_knob_must_agree_with_the_mode():
    assert AlgorithmConfig(mode="add", soft_thinking={"mode": "add", "scale": 0.5}).mode == "add"
    with pytest.raises(ValueError, match=r"^soft_thinking.mode \('add'\) disagrees with mode \('replace'\); set mode only$"):
        AlgorithmConfig(mode="replace", soft_thinking={"mode": "add"})


def test_engine_model_must_be_unset_or_the_model():
    assert TrainConfig(model="tiny").model == "tiny"  # engine.model left at its default
    assert TrainConfig(model="tiny", engine=EngineConfig(model="tiny")).engine.model == "tiny"
    with pytest.raises(ValueError, match=r"^engine.model \('tiny'\) disagrees with model \('smollm2-135m'\)"):
        TrainConfig(model="smollm2-135m", engine=EngineConfig(model="tiny"))


@pytest.mark.parametrize("action, soft_thinking, expected", [
    ("token", {"noise": "gumbel", "tau": 0.5}, {"noise": "gumbel", "tau": 0.5, "action": "token", "multiplex": 0}),
    ("concrete", {}, {"noise": "gumbel", "action": "sampled", "multiplex": 0}),
    ("concrete", {"noise": "dirichlet"}, {"noise": "dirichlet", "action": "sampled", "multiplex": 0}),
    ("multiplex", {}, {"multiplex": 4, "action": "sampled", "noise": "none"}),
    ("multiplex", {"multiplex": 2, "multiplex_replacement": False}, {"multiplex": 2, "multiplex_replacement": False}),
    ("gaussian", {"sigma": 0.3}, {"noise": "gaussian", "sigma": 0.3, "action": "sampled"}),
])
def test_a_soft_action_sets_the_rollout_knobs_it_needs(action, soft_thinking, expected):
    knobs = AlgorithmConfig(mode="replace", soft_thinking=soft_thinking, soft_action=action).rollout_knobs()
    assert {knob: knobs[knob] for knob in expected} == expected and knobs["mode"] == "replace"


@pytest.mark.parametrize("action, soft_thinking, message", [
    ("token", {"action": "sampled"}, "needs soft_thinking.action = 'token' (got 'sampled')"),
    ("concrete", {"noise": "none"}, "needs soft_thinking.noise in ('gumbel', 'dirichlet') (got 'none')"),
    ("concrete", {"multiplex": 3}, "needs soft_thinking.multiplex = 0 (got 3)"),
    ("multiplex", {"noise": "gumbel"}, "needs soft_thinking.noise = 'none' (got 'gumbel')"),
    ("multiplex", {"multiplex": 0}, "needs soft_thinking.multiplex > 0 (got 0)"),
    ("gaussian", {"noise": "gumbel"}, "needs soft_thinking.noise = 'gaussian' (got 'gumbel')"),
])
def test_a_knob_that_disagrees_with_the_soft_action_is_an_error_naming_both(action, soft_thinking, message):
    with pytest.raises(ValueError, match=f"^algorithm.soft_action {action!r} {message}$".replace("(", r"\(").replace(")", r"\)")):
        AlgorithmConfig(mode="replace", soft_thinking=soft_thinking, soft_action=action)


def test_hidden_mode_takes_no_soft_action():
    assert AlgorithmConfig(mode="hidden", soft_thinking={"max_soft_steps": 4}).rollout_knobs() == {
        "max_soft_steps": 4, "mode": "hidden", "noise": "none"}
    with pytest.raises(ValueError, match="soft_action does not apply to mode hidden"):
        AlgorithmConfig(mode="hidden", soft_thinking={"max_soft_steps": 4}, soft_action="token")


@pytest.mark.parametrize("path", sorted(p.name for p in (Path(__file__).parents[2] / "configs").glob("*.yaml")
                                        if p.name != "rollout_smoke.yaml"))
def test_every_shipped_training_config_loads(path):
    """The configs the README and the benchmarks name are valid as written."""
    from rollout.config import load_config

    config = load_config(TrainConfig, Path(__file__).parents[2] / "configs" / path, [])
    assert config.steps > 0
