"""Reading a soft-thinking trace from an offline ``CompletionOutput`` or an OpenAI choice.

Offline, the trace is the list ``completion_output.soft_thinking`` and the knobs it ran
with are ``completion_output.soft_thinking_knobs``. Over the OpenAI API
(completions and chat, non-streaming), each choice of a soft request has a field

    "soft_thinking": {"num_soft_steps": 12, "end_reason": "cold_stop", "cold_stop": true,
                      "knobs": {...the resolved knobs: which noise ran, the think-end token...},
                      "steps": [ ...one vllm_soft.records.SoftStep per soft step... ]}

and ``soft_trace`` / ``soft_summary`` / ``soft_knobs`` accept that choice (openai client
object or dict).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm_soft.records import SoftStep

COMPLETION_ATTRIBUTE = "soft_thinking"
KNOBS_ATTRIBUTE = "soft_thinking_knobs"


def _field(source):
    """The trace field of an offline completion (a list) or of an API choice (a dict)."""
    if isinstance(source, dict):
        return source.get(COMPLETION_ATTRIBUTE)
    field = getattr(source, COMPLETION_ATTRIBUTE, None)
    if field is None:
        field = (getattr(source, "model_extra", None) or {}).get(COMPLETION_ATTRIBUTE)
    return field


def _steps(source) -> list[dict[str, Any]]:
    field = _field(source)
    if isinstance(field, dict):  # an API choice
        return list(field.get("steps") or [])
    return list(field or [])


def soft_trace(completion) -> list["SoftStep"]:
    """One record per soft step of a finished completion, in order
    (``vllm_soft.records.SoftStep``: position, token_ids, weights, entropy, emitted,
    logprob, end_reason). A plain request's completion has an empty trace.
    """
    return _steps(completion)


def soft_knobs(completion) -> dict[str, Any] | None:
    """The knobs a completion's soft steps ran with (offline completion or API choice), as
    the engine resolved them: its defaults merged with the request's, ``think_end`` and
    ``noise`` 'auto' decided (``noise`` says which randomness ran), ``think_end_id`` found.
    What a replay of the completion must use. None for a plain request."""
    field = _field(completion)
    if isinstance(field, dict):
        return field.get("knobs")
    return getattr(completion, KNOBS_ATTRIBUTE, None)


def summarize(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """How many steps were soft and how thinking ended (``end_reason`` None: it had not)."""
    end_reason = trace[-1]["end_reason"] if trace else None
    return {"num_soft_steps": len(trace), "end_reason": end_reason, "cold_stop": end_reason == "cold_stop"}


def soft_summary(completion) -> dict[str, Any]:
    """``summarize`` of a completion's trace."""
    return summarize(soft_trace(completion))


def api_field(trace: list[dict[str, Any]], knobs: dict[str, Any] | None) -> dict[str, Any]:
    """The ``soft_thinking`` field of an OpenAI choice: the summary, the resolved knobs, the steps."""
    return {**summarize(trace), "knobs": knobs, "steps": trace}
