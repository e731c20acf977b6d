"""The soft-step record: one schema from the engine's packed rows to the trace, the API
JSON, the rollout ``Sample`` and the learner's replay.

Imports only numpy. The engine's worker packs a step's rows into one float64 array
(``soft_step.SoftStepOutput.packed``: K token ids, K weights, then ``PACKED_COLUMNS``),
the scheduler hands a finished request's rows out as ``pack_trace`` blocks, and the front
end turns them into ``SoftStep`` entries (``unpack_trace``): the only place a packed row
becomes a record.
"""

from typing import TypedDict

import numpy as np

END_REASONS = (None, "think_end", "cold_stop", "budget")
"""``end_code`` -> end reason; code 0: thinking goes on."""

PACKED_COLUMNS = ("kept", "entropy", "emitted", "logprob", "end_code")
"""Columns of a packed row after its K token ids and K weights."""


class SoftStep(TypedDict):
    """One soft step of a request, as the engine took it (a JSON object over the API and in
    rollout files)."""

    position: int
    """Index of the step's emitted token in the completion's token ids (soft step k is at k)."""
    token_ids: list[int]
    """The kept support, by descending probability."""
    weights: list[float]
    """The mixture weights fed back (after noise), one per token id; they sum to 1."""
    entropy: float
    """Entropy (nats) of the step's full tempered distribution (what cold stop compares)."""
    emitted: int
    """The token id the text shows at ``position``."""
    logprob: float | None
    """Rollout log-probability of the step's action; None for a token forced by cold stop
    or the budget (no choice of the policy)."""
    end_reason: str | None
    """None while thinking goes on, else why it ended at this step: think_end, cold_stop, budget."""


def row_support(row: np.ndarray) -> tuple[list[int], list[float]]:
    """(token ids, weights) of the support of one packed row."""
    slots = (row.shape[0] - len(PACKED_COLUMNS)) // 2
    kept = int(row[2 * slots])
    return row[:kept].astype(np.int64).tolist(), row[slots : slots + kept].tolist()


def unpack_rows(payload: np.ndarray, first_position: int = 0) -> list[SoftStep]:
    """Packed rows as records, row i at soft step ``first_position + i``; columns are
    converted for all rows at once, then sliced."""
    slots = (payload.shape[1] - len(PACKED_COLUMNS)) // 2
    token_ids = payload[:, :slots].astype(np.int64).tolist()
    weights = payload[:, slots : 2 * slots].tolist()
    kept, emitted, end_code = (payload[:, 2 * slots + c].astype(np.int64).tolist() for c in (0, 2, 4))
    entropy, logprob = payload[:, 2 * slots + 1].tolist(), payload[:, 2 * slots + 3].tolist()
    return [
        SoftStep(
            position=first_position + row,
            token_ids=token_ids[row][: kept[row]],
            weights=weights[row][: kept[row]],
            entropy=entropy[row],
            emitted=emitted[row],
            logprob=None if logprob[row] != logprob[row] else logprob[row],  # NaN: a forced token
            end_reason=END_REASONS[end_code[row]],
        )
        for row in range(payload.shape[0])
    ]


def pack_trace(rows: list[np.ndarray]) -> list[dict]:
    """A request's packed rows, in step order, in the form the trace crosses processes in:
    runs of rows of one width as {"shape", "data": float64 bytes} blocks (plain msgpack
    types; a step's width is 2K + 5 for the largest top-k K of its batch)."""
    blocks, start = [], 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end].shape[0] != rows[start].shape[0]:
            block = np.stack(rows[start:end])
            blocks.append({"shape": list(block.shape), "data": block.tobytes()})
            start = end
    return blocks


def unpack_trace(blocks: list[dict], first_position: int = 0) -> list[SoftStep]:
    """``pack_trace``'s blocks as records, the first at soft step ``first_position`` (a
    streamed request's trace arrives in pieces)."""
    steps: list[SoftStep] = []
    for block in blocks:
        payload = np.frombuffer(block["data"], dtype=np.float64).reshape(block["shape"])
        steps += unpack_rows(payload, first_position + len(steps))
    return steps
