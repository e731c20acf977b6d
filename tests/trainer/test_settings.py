"""Training configs: two settings that disagree are an error naming both."""

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
