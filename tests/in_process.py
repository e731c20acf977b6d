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
