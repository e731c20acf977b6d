"""The plugin is installed as a vLLM entry point, gates vLLM versions, and reaches workers."""

import importlib.metadata
import sys

import pytest

from vllm_soft import plugin
from vllm_soft.patches import all_patches
from vllm_soft.patches.targets import PATCH_TARGETS, patch_names
from vllm_soft.compat import SUPPORTED_VLLM_SERIES, check_vllm_version


def test_entry_point_is_registered():
    entry_points = importlib.metadata.entry_points(group="vllm.general_plugins")
    ours = [ep for ep in entry_points if ep.value == "vllm_soft.plugin:register"]
    assert len(ours) == 1
    assert ours[0].load() is plugin.register


@pytest.mark.parametrize("version", ["0.32.0", "0.32.1", "0.33.0", "0.33.2rc1"])
def test_supported_versions_pass(version):
    assert check_vllm_version(version) == version


@pytest.mark.parametrize("version", ["0.31.2", "0.34.0", "1.0.0"])
def test_unsupported_versions_name_the_supported_ones(version):
    with pytest.raises(RuntimeError, match="0.32.x, 0.33.x") as excinfo:
        check_vllm_version(version)
    assert version in str(excinfo.value)


def test_installed_vllm_is_supported():
    import vllm

    assert check_vllm_version() == vllm.__version__
    assert ".".join(vllm.__version__.split(".")[:2]) in SUPPORTED_VLLM_SERIES


def test_register_is_idempotent():
    plugin.register()
    first = plugin.active_patches()
    plugin.register()
    assert plugin.active_patches() == first
    assert first == [name for name, _ in all_patches()]


def _plugin_state_in_worker(worker):
    """Runs inside a vLLM worker process: did vLLM itself import and register the plugin?"""
    worker_plugin = sys.modules.get("vllm_soft.plugin")
    return {"loaded": worker_plugin is not None, "patches": worker_plugin and worker_plugin.active_patches()}


@pytest.mark.slow
def test_vllm_loads_plugin_in_its_worker_process(tiny_engine):
    states = tiny_engine.collective_rpc(_plugin_state_in_worker)
    assert states == [{"loaded": True, "patches": [name for name, _ in all_patches()]}]


@pytest.mark.parametrize("target", PATCH_TARGETS, ids=lambda t: f"{t.owner or t.module}.{t.attribute}")
def test_every_patched_attribute_exists_and_is_wrapped(target):
    """Guards upgrades: each patch target is still in vLLM, and our wrapper is installed."""
    import importlib

    plugin.register()
    owner = importlib.import_module(target.module)
    if target.owner is not None:
        owner = getattr(owner, target.owner)
    value = getattr(owner, target.attribute)
    wrapped = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
    assert hasattr(wrapped, "__wrapped__"), f"{target.module}.{target.owner}.{target.attribute} is not patched"


def test_patch_targets_name_the_applied_patches():
    assert patch_names() == [name for name, _ in all_patches()]
