"""Shared fixtures: built models and vLLM engines, one of each per test session.

An engine takes ~35 s to start on 2 CPU cores as vLLM starts it by default (engine core
and model worker in processes of their own), ~10 s inside the test process, so tests share
them, and the default-model engines of tests/vllm_soft run in this process
(``in_process``), as do the learner-replay tests' rollout workers; the tiny engine and the
rollout pools keep vLLM's processes, the way users run them. Engines run in float32 so vLLM and
transformers can be compared, and have soft thinking enabled with built-in defaults: plain
requests on them must behave exactly as on stock vLLM, which the tests check too.
"""

import os

import pytest
import torch
from in_process import engine_in_this_process, shared_distributed_state

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


IN_PROCESS_ENGINES = ("default_engine", "inprocess_tiny_engine", "preempting_engine")
"""Fixtures whose engine runs in the test process (see tests/in_process.py)."""
PROCESS_GROUP_TESTS = "tests/trainer/test_learner.py"
"""Tests that start a torch.distributed group of their own: no in-process engine before them."""


def pytest_collection_modifyitems(config, items):
    _in_process_engines_come_last(items)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _in_process_engines_come_last(items) -> None:
    """An in-process engine initialises torch.distributed for the rest of the session, and the
    learner tests then fail to start their group: refuse a test order that would do that."""
    paths = [item.nodeid.split("::")[0] for item in items]
    if PROCESS_GROUP_TESTS not in paths:
        return
    last_learner_test = len(paths) - 1 - paths[::-1].index(PROCESS_GROUP_TESTS)
    early = [item.nodeid for item in items[:last_learner_test] if set(IN_PROCESS_ENGINES) & set(item.fixturenames)]
    if early:
        raise pytest.UsageError(f"{early[0]} uses an in-process engine but runs before {PROCESS_GROUP_TESTS}, "
                                "whose process groups it would break: move it to tests/vllm_soft")


@pytest.fixture(scope="session", autouse=True)
def _engines_share_distributed_state():
    """Session-long: no engine's shutdown tears down the distributed groups that this
    process's other engines use (``in_process.shared_distributed_state``)."""
    with shared_distributed_state():
        yield


@pytest.fixture(scope="session")
def tiny_model_path():
    return models.fetch("tiny")


@pytest.fixture(scope="session")
def default_model_path():
    return models.fetch(models.DEFAULT_MODEL)


def _start_engine(path, in_process: bool = False, **overrides):
    from vllm import LLM

    if not in_process:
        return LLM(model=str(path), **{**ENGINE_KWARGS, **overrides})
    with engine_in_this_process():
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
    """The default model; blocks of 32 tokens, so that the tests' chat prompts (38-48
    tokens) fill a whole block that the prefix cache can share (CPU's default is 128)."""
    llm = _start_engine(default_model_path, in_process=True, block_size=32)
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def inprocess_tiny_engine(tiny_model_path):
    """The tiny model with the engine core in this process, so tests can look inside the
    scheduler and the worker directly."""
    llm = _start_engine(tiny_model_path, in_process=True)
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
        in_process=True,
        block_size=32,
        max_model_len=256,
        kv_cache_memory_bytes=16 * 32 * DEFAULT_MODEL_KV_BYTES_PER_TOKEN,
        disable_log_stats=False,
    )
    yield llm
    llm.llm_engine.engine_core.shutdown()
