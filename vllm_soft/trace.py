"""Reading a soft-thinking trace from an offline ``CompletionOutput`` or an OpenAI choice.

Offline, the trace is the list ``completion_output.soft_thinking``. Over the OpenAI API
(completions and chat, non-streaming), each choice of a soft request has a field

    "soft_thinking": {"num_soft_steps": 12, "end_reason": "cold_stop", "cold_stop": true,
                      "steps": [ ...one entry per soft step, as below... ]}

and ``soft_trace`` / ``soft_summary`` accept that choice (openai client object or dict).
"""

from typing import Any

COMPLETION_ATTRIBUTE = "soft_thinking"


def _steps(source) -> list[dict[str, Any]]:
    if isinstance(source, dict):
        field = source.get(COMPLETION_ATTRIBUTE)
    else:
        field = getattr(source, COMPLETION_ATTRIBUTE, None)
        if field is None:
            field = (getattr(source, "model_extra", None) or {}).get(COMPLETION_ATTRIBUTE)
    if isinstance(field, dict):  # an API choice
        return list(field.get("steps") or [])
    return list(field or [])


def soft_trace(completion) -> list[dict[str, Any]]:
    """One entry per soft step of a finished completion, in order.

    Each entry: ``position`` (index into the completion's token ids), ``token_ids``
    (kept support, by descending probability), ``weights`` (as used, after noise),
    ``entropy`` (nats), ``emitted`` (the token id the text shows), ``logprob`` (log of
    the emitted token's weight; None for a token forced by cold stop or the budget),
    and ``end_reason`` (None, or why thinking ended at this step: think_end, cold_stop,
    budget). A plain request's completion has an empty trace.
    """
    return _steps(completion)


def summarize(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """How many steps were soft and how thinking ended (``end_reason`` None: it had not)."""
    end_reason = trace[-1]["end_reason"] if trace else None
    return {"num_soft_steps": len(trace), "end_reason": end_reason, "cold_stop": end_reason == "cold_stop"}


def soft_summary(completion) -> dict[str, Any]:
    """``summarize`` of a completion's trace."""
    return summarize(soft_trace(completion))


def api_field(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``soft_thinking`` field of an OpenAI choice: the summary plus the steps."""
    return {**summarize(trace), "steps": trace}
