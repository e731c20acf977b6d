"""Reading a completion's soft-thinking trace (offline ``CompletionOutput``)."""

from typing import Any

COMPLETION_ATTRIBUTE = "soft_thinking"


def soft_trace(completion_output) -> list[dict[str, Any]]:
    """One entry per soft step of a finished completion, in order.

    Each entry: ``position`` (index into ``completion_output.token_ids``), ``token_ids``
    (kept support, by descending probability), ``weights`` (as used, after noise),
    ``entropy`` (nats), ``emitted`` (the token id the text shows), ``logprob`` (log of
    the emitted token's weight; None for a token forced by cold stop or the budget),
    and ``end_reason`` (None, or why thinking ended at this step: think_end, cold_stop,
    budget). A plain request's completion has an empty trace.
    """
    return list(getattr(completion_output, COMPLETION_ATTRIBUTE, None) or [])


def soft_summary(completion_output) -> dict[str, Any]:
    """How many steps were soft and how thinking ended (``end_reason`` None: it had not)."""
    trace = soft_trace(completion_output)
    end_reason = trace[-1]["end_reason"] if trace else None
    return {"num_soft_steps": len(trace), "end_reason": end_reason, "cold_stop": end_reason == "cold_stop"}
