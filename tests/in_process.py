"""vLLM engines inside the test process: no engine-core or worker process to start (each
would import torch and vLLM again, ~25 s on 2 cores).

Such an engine initialises torch.distributed (world size 1) in the test process for the
rest of the session, so tests that start a process group of their own (the learner's,
tests/trainer/test_learner.py) fail after it: only tests that pytest runs after those start
engines this way (tests/trainer/test_policy.py and tests/vllm_soft)."""

import contextlib
import os


@contextlib.contextmanager
def engine_in_this_process():
    """Engines created in this block run their core and model worker in this process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). An engine core started earlier in the process
    froze vLLM's view of the environment: it is read afresh."""
    import vllm.envs as envs

    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    envs.disable_envs_cache()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
        envs.disable_envs_cache()


@contextlib.contextmanager
def shared_distributed_state():
    """Keep this process's distributed groups alive when an in-process engine shuts down.

    vLLM's ``EngineCore.shutdown`` ends with ``cleanup_dist_env_and_memory``: it destroys
    the world and model-parallel groups, which every in-process engine of the test session
    shares. A test that shuts down an engine of its own (tests/vllm_soft/
    test_runner_selection.py, test_tensor_parallel.py) would leave the session's engines
    failing their next step ("pipeline model parallel group is not initialized"), and a
    failed step leaves requests in the scheduler that hang the next ``generate``. The groups
    are torn down once, with the process."""
    from vllm.v1.engine import core

    teardown = core.cleanup_dist_env_and_memory
    core.cleanup_dist_env_and_memory = lambda shutdown_ray=False: _envs_and_gc_only()
    try:
        yield
    finally:
        core.cleanup_dist_env_and_memory = teardown


def _envs_and_gc_only() -> None:
    """What ``cleanup_dist_env_and_memory`` does that one engine may do: forget vLLM's view
    of the environment and let the engine's objects be collected."""
    import gc

    import vllm.envs as envs

    envs.disable_envs_cache()
    gc.unfreeze()
