"""vLLM plugin entry point (group ``vllm.general_plugins``).

vLLM calls ``register()`` in every process it starts (API server, engine core,
workers), possibly more than once per process, so it must be idempotent. Order:
check the vLLM version (one gate, ``compat``), then apply the patches listed in
``vllm_soft.patches``, each at most once. vLLM gives no feedback on what a plugin did, so
``register`` logs it and ``active_patches()`` lets tests ask.
"""

from collections.abc import Callable

from vllm_soft.compat import check_vllm_version
from vllm_soft.log import logger
from vllm_soft.runtime import die_with_parent_if_asked



def _patches() -> list[tuple[str, Callable[[], None]]]:
    from vllm_soft.patches import all_patches

    return all_patches()

_applied: list[str] = []


def register() -> None:
    """Check the vLLM version and apply every patch in ``vllm_soft.patches`` once."""
    version = check_vllm_version()
    die_with_parent_if_asked()
    for name, apply in _patches():
        if name in _applied:
            continue
        apply()
        _applied.append(name)
    logger.info("vllm-soft plugin registered on vLLM %s; patches: %s", version, _applied or "none")


def active_patches() -> list[str]:
    """Names of the patches applied in this process, in order."""
    return list(_applied)
