"""Typed run configs: a YAML file plus ``key.sub=value`` overrides, checked into dataclasses.

    configs/x.yaml ──yaml.safe_load──┐
                                     ├─merge─► dict ──from_dict(cls)──► dataclass tree
    a.b=1 c=2 ──parse_overrides──────┘                                      │
                                         run dir/config.yaml ◄──save_config─┘

Every key is checked against the dataclass fields and every value against the field's type
annotation; errors name the dotted key (``rollout.sampling.temperature``) and what is allowed.
A dataclass's own checks run as usual (``__post_init__``, then ``validate()`` if it has one).
"""

import argparse
import dataclasses
import difflib
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from rollout.files import atomic_write_text

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """The dataclass ``cls`` built from the YAML file at ``path`` (None: defaults), then ``overrides``."""
    data = {}
    if path is not None:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if data is None:  # an empty file
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file must hold a mapping of keys (got {type(data).__name__})")
    return from_dict(cls, merge(data, parse_overrides(overrides)))


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """The dataclass ``cls`` built from ``data``, every key and value checked; ``prefix`` is its dotted key."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or cls.__name__}: expected a mapping of {cls.__name__} keys, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ValueError(_unknown_key(str(key), sorted(fields), prefix))
    for name, f in fields.items():
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = _join(prefix, name)
            raise ValueError(f"missing required key {key!r}: set it in the config file or as {key}=VALUE")
    hints = get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, _join(prefix, name)) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
        if callable(getattr(obj, "validate", None)):
            obj.validate()
    except ValueError as error:
        if not prefix:
            raise
        raise ValueError(f"{prefix}: {error}") from error
    return obj


def to_dict(obj: Any) -> dict:
    """Plain data for the dataclass ``obj``: nested dicts, lists for tuples, so YAML round-trips."""
    assert dataclasses.is_dataclass(obj) and not isinstance(obj, type), obj
    return _plain(obj)


def save_config(obj: Any, path: str | Path) -> None:
    """Write the dataclass ``obj`` as YAML, atomically; ``load_config(type(obj), path)`` reads it back."""
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)


def parse_overrides(overrides: Sequence[str]) -> dict:
    """A nested dict from ``a.b=value`` strings (values parsed as YAML); later ones win."""
    result: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. rollout.sampling.temperature=0.7)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            detail = getattr(error, "problem", None) or error  # `problem`: the one-line reason, without the marks
            raise ValueError(f"override {item!r}: the value is not valid YAML ({detail})") from error
        for part in reversed(parts):
            value = {part: value}
        result = merge(result, value)
    return result


def merge(base: dict, update: dict) -> dict:
    """A deep merge of two nested dicts: mappings merge key by key, any other value of ``update`` wins."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_arg_parser(description: str) -> argparse.ArgumentParser:
    """A parser for ``--config PATH`` and ``key.sub=value`` overrides, shared by every entry point."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, metavar="PATH", help="YAML run config (default: built-in defaults)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="applied over the file, e.g. rollout.sampling.temperature=0.7 (values are parsed as YAML)",
    )
    return parser


def _convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (nested dataclasses built); ``key`` for errors."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        return _convert_union(tp, args, value, key)
    if origin is Literal:
        # `type(...) is` too, so that True does not pass for 1.
        if not any(value == choice and type(value) is type(choice) for choice in args):
            raise ValueError(f"{key}: expected one of {', '.join(map(repr, args))}, got {_show(value)}")
        return value
    if tp is bool:
        return _expect(isinstance(value, bool), tp, value, key)
    if tp is int:
        return _expect(isinstance(value, int) and not isinstance(value, bool), tp, value, key)
    if tp is float:
        # YAML 1.1 reads `1e-5` (no dot) as a string, so take numeric strings here.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        return float(_expect(isinstance(value, (int, float)) and not isinstance(value, bool), tp, value, key))
    if tp is str:
        return _expect(isinstance(value, str), tp, value, key)
    if tp is dict:
        return _expect(isinstance(value, dict), tp, value, key)
    if origin is list or origin is tuple:
        _expect(isinstance(value, (list, tuple)), tp, value, key)
        if origin is list:
            return [_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{key}: expected {len(args)} items ({_name(tp)}), got {_show(value)}")
        return tuple(_convert(item_tp, item, f"{key}[{i}]") for i, (item_tp, item) in enumerate(zip(args, value)))
    if origin is dict:
        _expect(isinstance(value, dict), tp, value, key)
        return {_convert(args[0], k, f"{key}.{k}"): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"{key}: unsupported field type {_name(tp)} in a config dataclass")


def _convert_union(tp: Any, args: tuple, value: Any, key: str) -> Any:
    """``value`` as the first member of the union ``tp`` that accepts it (None for optional fields)."""
    if value is None and type(None) in args:
        return None
    members = [arg for arg in args if arg is not type(None)]
    if len(members) == 1:  # `X | None`: X's own error is the precise one
        return _convert(members[0], value, key)
    for member in members:
        try:
            return _convert(member, value, key)
        except ValueError:
            continue
    raise ValueError(f"{key}: expected {_name(tp)}, got {_show(value)}")


def _expect(ok: bool, tp: Any, value: Any, key: str) -> Any:
    """``value`` if ``ok``, else a ValueError naming ``key``, the expected type and the value."""
    if not ok:
        raise ValueError(f"{key}: expected {_name(tp)}, got {_show(value)}")
    return value


def _unknown_key(key: str, valid: list[str], prefix: str) -> str:
    """The error for an unknown key: its dotted name, the closest valid key, and all valid keys."""
    message = f"unknown key {_join(prefix, key)!r}"
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        message += f" (did you mean {_join(prefix, close[0])!r}?)"
    return f"{message}; valid keys: {', '.join(valid)}"


def _plain(value: Any) -> Any:
    """``value`` with dataclasses as dicts (init fields only) and tuples as lists, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"
