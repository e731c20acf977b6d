"""The plugin is installed as a vLLM entry point, gates vLLM versions, and reaches workers."""

import importlib.metadata
import sys

import pytest

from vllm_soft import plugin
from vllm_soft.patches import all_patches
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


PATCHED_ATTRIBUTES = [
    ("vllm.engine.arg_utils", "EngineArgs", "add_cli_args"),
    ("vllm.engine.arg_utils", "EngineArgs", "from_cli_args"),
    ("vllm.sampling_params", "SamplingParams", "_verify_extra_args"),
    ("vllm.v1.engine.input_processor", "InputProcessor", "process_inputs"),
    ("vllm.v1.engine.output_processor", "RequestState", "make_request_output"),
    ("vllm.v1.engine.output_processor", "RequestState", "_new_completion_output"),
    ("vllm.entrypoints.openai.completion.serving", "OpenAIServingCompletion", "request_output_to_completion_response"),
    ("vllm.entrypoints.openai.chat_completion.serving", "OpenAIServingChat", "chat_completion_full_generator"),
    ("vllm.v1.core.kv_cache_utils", None, "generate_block_hash_extra_keys"),
    ("vllm.v1.core.sched.scheduler", "Scheduler", "update_from_output"),
    ("vllm.v1.core.sched.scheduler", "Scheduler", "_free_request"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "__init__"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_update_states"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_preprocess"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_sample"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "sample_tokens"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_bookkeeping_sync"),
    ("vllm.v1.sample.sampler", "Sampler", "sample"),
]


@pytest.mark.parametrize("module, owner, attribute", PATCHED_ATTRIBUTES)
def test_every_patched_attribute_exists_and_is_wrapped(module, owner, attribute):
    """Guards upgrades: each patch target is still in vLLM, and our wrapper is installed."""
    import importlib

    plugin.register()
    target = importlib.import_module(module)
    if owner is not None:
        target = getattr(target, owner)
    value = getattr(target, attribute)
    wrapped = getattr(value, "__func__", value)
    assert hasattr(wrapped, "__wrapped__"), f"{module}.{owner}.{attribute} is not patched"
