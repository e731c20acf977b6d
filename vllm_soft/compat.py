"""The one gate on vLLM versions: every vLLM-facing module calls ``check_vllm_version``."""

SUPPORTED_VLLM_SERIES = ("0.32", "0.33")


def check_vllm_version(version: str | None = None) -> str:
    """Return the vLLM version, or raise RuntimeError when vllm-soft does not support it."""
    if version is None:
        from vllm import __version__ as version
    series = ".".join(version.split(".")[:2])
    if series not in SUPPORTED_VLLM_SERIES:
        supported = ", ".join(f"{s}.x" for s in SUPPORTED_VLLM_SERIES)
        raise RuntimeError(
            f"vllm-soft supports vLLM {supported}; found vLLM {version}. "
            "Install a supported build: pip install 'vllm-soft[cpu]' or 'vllm-soft[cuda]'."
        )
    return version
