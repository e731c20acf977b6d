"""Typed configs: YAML plus overrides, type checks, errors that name the dotted key, round trips."""

from __future__ import annotations  # string annotations, as config modules may use them

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from rollout.config import (
    config_arg_parser,
    from_dict,
    load_config,
    merge,
    parse_overrides,
    save_config,
    to_dict,
)


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    max_tokens: int = 64
    stop: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {self.temperature})")


@dataclass
class RolloutConfig:
    backend: Literal["cpu", "gpu"] = "cpu"
    num_generations: int = 4
    batch_size: int = 8
    seed: int | None = None
    think_end: str | int | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self):
        if self.batch_size % self.num_generations:
            counts = f"{self.num_generations} and {self.batch_size}"
            raise ValueError(f"num_generations must divide batch_size (got {counts})")


@dataclass
class RunConfig:
    name: str
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    betas: tuple[float, float] = (0.9, 0.999)
    tags: tuple[str, ...] = ()
    reward_weights: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    note: Any = None


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_then_overrides(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {
        "name": "base",
        "rollout": {"num_generations": 2, "sampling": {"temperature": 0.7, "max_tokens": 32}},
    })
    config = load_config(RunConfig, path, ["rollout.sampling.temperature=0.5", "rollout.seed=3", "tags=[a, b]"])
    assert config.name == "base"
    assert config.rollout.num_generations == 2 and config.rollout.seed == 3
    assert config.rollout.sampling == SamplingConfig(temperature=0.5, max_tokens=32)
    assert config.tags == ("a", "b") and config.betas == (0.9, 0.999)
    assert load_config(RolloutConfig, None) == RolloutConfig()
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(RolloutConfig, str(tmp_path / "empty.yaml")) == RolloutConfig()


@pytest.mark.parametrize(
    "text, value",
    [("3", 3), ("0.5", 0.5), ("true", True), ("null", None), ("[1, 2]", [1, 2]), ("{a: 1}", {"a": 1}), ("hi", "hi")],
)
def test_override_values_are_yaml(text, value):
    parsed = parse_overrides([f"a.b={text}"])["a"]["b"]
    assert parsed == value and type(parsed) is type(value)


def test_overrides_nest_and_later_ones_win():
    assert parse_overrides(["a.b=1", "a.c=x", "a.b=2", "d=3"]) == {"a": {"b": 2, "c": "x"}, "d": 3}
    assert parse_overrides(["a==b"]) == {"a": "=b"}
    for bad in ("a.b", "=1", "a..b=1", "a.=1"):
        with pytest.raises(ValueError, match=f"override '{bad}' is not KEY=VALUE"):
            parse_overrides([bad])
    with pytest.raises(ValueError, match="override 'a=\\[1': the value is not valid YAML \\(expected ',' or '\\]'"):
        parse_overrides(["a=[1"])


def test_merge_is_deep_and_leaves_its_inputs_alone():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    assert merge(base, {"a": {"b": 3}, "d": [2], "e": 4}) == {"a": {"b": 3, "c": 2}, "d": [2], "e": 4}
    assert merge(base, {"a": 5}) == {"a": 5, "d": [1]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}


def test_numbers_become_floats_where_floats_are_expected():
    config = load_config(RunConfig, None, ["name=x", "rollout.sampling.temperature=1", "reward_weights={a: 2}"])
    assert type(config.rollout.sampling.temperature) is float and config.reward_weights == {"a": 2.0}
    # YAML 1.1 reads 1e-5 (no dot) as a string; a float field takes it as the number.
    assert load_config(SamplingConfig, None, ["temperature=1e-5"]).temperature == 1e-5


def test_unions_take_the_first_member_that_fits():
    assert load_config(RolloutConfig, None, ["think_end=7"]).think_end == 7
    assert load_config(RolloutConfig, None, ["think_end=</think>"]).think_end == "</think>"
    assert load_config(RolloutConfig, None, ["think_end=null", "seed=null"]) == RolloutConfig()
    with pytest.raises(ValueError, match=r"think_end: expected str \| int \| None, got 1.5 \(float\)"):
        load_config(RolloutConfig, None, ["think_end=1.5"])


def test_unknown_key_names_the_dotted_key_and_suggests():
    with pytest.raises(
        ValueError,
        match="unknown key 'rollout.sampling.temprature' \\(did you mean 'rollout.sampling.temperature'\\?\\); "
        "valid keys: max_tokens, stop, temperature",
    ):
        load_config(RunConfig, None, ["name=x", "rollout.sampling.temprature=0.5"])
    with pytest.raises(ValueError, match="unknown key 'zzz'; valid keys: backend, batch_size"):
        load_config(RolloutConfig, None, ["zzz=1"])


WRONG_TYPES = [
    ("rollout.num_generations=two", "rollout.num_generations: expected int, got 'two' (str)"),
    ("rollout.num_generations=true", "rollout.num_generations: expected int, got True (bool)"),
    ("rollout.num_generations=2.0", "rollout.num_generations: expected int, got 2.0 (float)"),
    ("rollout.sampling.temperature=true", "rollout.sampling.temperature: expected float, got True (bool)"),
    ("rollout.sampling.temperature=hot", "rollout.sampling.temperature: expected float, got 'hot' (str)"),
    ("rollout.seed=1.5", "rollout.seed: expected int, got 1.5 (float)"),
    ("rollout.sampling.stop=[a, 1]", "rollout.sampling.stop[1]: expected str, got 1 (int)"),
    ("rollout.sampling.stop=a", "rollout.sampling.stop: expected list[str], got 'a' (str)"),
    ("rollout.sampling=3", "rollout.sampling: expected a mapping of SamplingConfig keys, got 3 (int)"),
    ("reward_weights={a: x}", "reward_weights.a: expected float, got 'x' (str)"),
    ("reward_weights={1: 2}", "reward_weights.1: expected str, got 1 (int)"),
    ("betas=[0.9]", "betas: expected 2 items (tuple[float, float]), got [0.9] (list)"),
    ("tags=[a, [b]]", "tags[1]: expected str, got ['b'] (list)"),
    ("extra=3", "extra: expected dict, got 3 (int)"),
    ("name=null", "name: expected str, got None (NoneType)"),
    ("rollout.backend=tpu", "rollout.backend: expected one of 'cpu', 'gpu', got 'tpu' (str)"),
]


@pytest.mark.parametrize("override, message", WRONG_TYPES)
def test_wrong_type_names_the_key_the_expected_type_and_the_value(override, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_config(RunConfig, None, ["name=x", override])


def test_missing_required_key():
    with pytest.raises(ValueError, match="missing required key 'name': set it in the config file or as name=VALUE"):
        load_config(RunConfig, None)


def test_own_checks_are_prefixed_with_where_the_dataclass_sits():
    with pytest.raises(ValueError, match="^rollout.sampling: temperature must be > 0 \\(got 0.0\\)$"):
        load_config(RunConfig, None, ["name=x", "rollout.sampling.temperature=0"])
    with pytest.raises(ValueError, match="^rollout: num_generations must divide batch_size \\(got 3 and 8\\)$"):
        load_config(RunConfig, None, ["name=x", "rollout.num_generations=3"])
    with pytest.raises(ValueError, match="^num_generations must divide batch_size"):
        from_dict(RolloutConfig, {"num_generations": 3})


def test_config_file_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="list.yaml: a config file must hold a mapping of keys \\(got list\\)"):
        load_config(RunConfig, path)


def test_save_and_load_round_trip(tmp_path):
    config = load_config(RunConfig, None, [
        "name=run", "rollout.sampling.stop=['</answer>']", "rollout.think_end=5", "tags=[a, 'true']",
        "reward_weights={accuracy: 1, format: 0.5}", "extra={lr: [1, 2]}", "note={k: v}", "betas=[0.8, 0.99]",
    ])
    path = tmp_path / "config.yaml"
    save_config(config, path)
    assert load_config(RunConfig, path) == config
    assert yaml.safe_load(path.read_text()) == to_dict(config)
    assert to_dict(config)["betas"] == [0.8, 0.99] and to_dict(config)["rollout"]["sampling"]["stop"] == ["</answer>"]
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temp file left behind


def test_arg_parser_reads_config_and_overrides():
    parser = config_arg_parser("a run")
    args = parser.parse_args(["--config", "configs/x.yaml", "a.b=1", "c=-2"])
    assert args.config == Path("configs/x.yaml") and args.overrides == ["a.b=1", "c=-2"]
    args = parser.parse_args([])
    assert args.config is None and args.overrides == []


def test_weight_transport_is_one_the_pool_knows():
    from rollout.settings import PoolConfig
    from rollout.transport import TRANSPORTS

    assert PoolConfig().weight_transport in TRANSPORTS
    with pytest.raises(ValueError, match="^weight_transport must be one of object_store \\(got 'nccl'\\)$"):
        PoolConfig(weight_transport="nccl")
