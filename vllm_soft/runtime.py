"""Process-level settings for running vLLM well on the machine at hand."""

import os
import sys

from vllm_soft.log import logger


def configure_cpu_threads() -> None:
    """On a machine without CUDA, let vLLM's CPU backend use every core we may run on.

    vLLM's CPU worker reserves one core and binds OpenMP threads itself unless told
    otherwise; on a small machine that halves throughput. Must run before the engine
    starts (its processes inherit the environment). Values already set are kept.
    """
    import torch

    if torch.cuda.is_available():
        return
    cores = sorted(os.sched_getaffinity(0))
    contiguous = cores == list(range(cores[0], cores[-1] + 1))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}-{cores[-1]}" if contiguous else "auto")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


DIE_WITH_PARENT_ENV = "VLLM_SOFT_DIE_WITH_PARENT"


def die_with_parent_if_asked() -> None:
    """With ``VLLM_SOFT_DIE_WITH_PARENT=1`` (set for rollout engines), ask Linux to kill
    this process when its parent dies, so a killed Ray actor leaves no vLLM engine-core or
    worker process behind (vLLM's engine core does not watch its parent)."""
    if os.environ.get(DIE_WITH_PARENT_ENV) != "1" or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def release_freed_memory(collect_cycles: bool = True) -> None:
    """Hand memory freed by Python and torch back to the OS (glibc keeps large freed
    blocks otherwise): call after a big transient peak, e.g. a training step or a weight
    load, so long-lived processes on a shared node don't grow to their worst peak.

    ``collect_cycles=False`` skips ``gc.collect`` (about 0.2 s in a process that imported
    transformers) where the peak was freed by reference counting, e.g. a weight push."""
    import ctypes
    import gc

    if collect_cycles:
        gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc (e.g. musl): nothing to trim
            pass


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16); without them vLLM's
    and torch's bf16 kernels run several times slower than float32."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def choose_dtype(has_cuda: bool, has_bf16_units: bool) -> str:
    """The dtype a machine runs a model well in: bf16 on CUDA or on CPUs with bf16 units
    (AMX, AVX-512 BF16), float32 elsewhere (AVX2-only CPUs run bf16 several times slower)."""
    return "bfloat16" if has_cuda or has_bf16_units else "float32"


def resolve_dtype(dtype: str, what: str = "model") -> str:
    """``dtype`` with ``auto`` replaced by this machine's ``choose_dtype``, the choice logged
    (``what`` names its user). vLLM's own ``--dtype auto`` means the checkpoint's dtype;
    the project's ``auto`` means the machine's."""
    if dtype != "auto":
        return dtype
    import torch

    cuda, units = torch.cuda.is_available(), cpu_has_bf16_units()
    chosen = choose_dtype(cuda, units)
    reason = "CUDA" if cuda else ("the CPU has bf16 units" if units else "the CPU has no bf16 units")
    logger.info("vllm-soft: %s dtype auto -> %s (%s)", what, chosen, reason)
    return chosen
