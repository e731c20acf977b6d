"""Shared fixtures: built models and vLLM engines, one of each per test session.

An engine takes ~25 s to start on CPU (eager mode; torch.compile would add ~70 s), so
tests share them. Engines run in float32 so vLLM and transformers can be compared, and
have soft thinking enabled with built-in defaults: plain requests on them must behave
exactly as on stock vLLM, which the tests check too.
"""

import os

import pytest
import torch

from vllm_soft import models
from vllm_soft.runtime import configure_cpu_threads

configure_cpu_threads()  # before any engine process is spawned
# Tests inspect worker processes by sending them functions (LLM.collective_rpc).
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

ENGINE_KWARGS = dict(
    dtype="float32",
    enforce_eager=True,
    max_model_len=1024,
    kv_cache_memory_bytes=1 << 30,
    seed=0,
    additional_config={"soft_thinking": {}},
)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_path():
    return models.fetch("tiny")


@pytest.fixture(scope="session")
def default_model_path():
    return models.fetch(models.DEFAULT_MODEL)


def _start_engine(path, **overrides):
    from vllm import LLM

    return LLM(model=str(path), **{**ENGINE_KWARGS, **overrides})


@pytest.fixture(scope="session")
def default_hf_model(default_model_path):
    """The default model in transformers, float32, for reference computations."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def default_tokenizer(default_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_path):
    llm = _start_engine(tiny_model_path)
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def default_engine(default_model_path):
    llm = _start_engine(default_model_path)
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def inprocess_tiny_engine(tiny_model_path):
    """The tiny model with the engine core in this process, so tests can look inside the
    scheduler and the worker directly."""
    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        llm = _start_engine(tiny_model_path)
    finally:
        if previous is None:
            del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
    yield llm
    llm.llm_engine.engine_core.shutdown()


# float32 SmolLM2-135M: 30 layers x 2 (K, V) x 3 heads x 64 dims x 4 bytes per token.
DEFAULT_MODEL_KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 4


@pytest.fixture(scope="session")
def preempting_engine(default_model_path):
    """The default model with a KV cache of 16 blocks of 32 tokens: 24 requests cannot all
    fit, so the scheduler preempts (and later recomputes) running requests."""
    llm = _start_engine(
        default_model_path,
        block_size=32,
        max_model_len=256,
        kv_cache_memory_bytes=16 * 32 * DEFAULT_MODEL_KV_BYTES_PER_TOKEN,
        disable_log_stats=False,
    )
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def default_rollout_worker(default_model_path):
    """A rollout worker (no Ray) on the default model in float32, for replay checks."""
    from rollout.settings import EngineConfig
    from rollout.worker import RolloutWorker

    worker = RolloutWorker(EngineConfig(model=str(default_model_path), dtype="float32", kv_cache_gib=0.5), {"correct": 1.0})
    yield worker
    worker.shutdown()
    worker.llm.llm_engine.engine_core.shutdown()
