"""vllm-soft: soft thinking inside vLLM's batched decode step, as a vLLM plugin.

Importing this package is cheap: it does not import vLLM or torch. The plugin itself
is registered through the ``vllm.general_plugins`` entry point (``vllm_soft.plugin``).
"""

from vllm_soft.trace import soft_knobs, soft_summary, soft_trace

__version__ = "0.1.0"
__all__ = ["soft_knobs", "soft_summary", "soft_trace"]
