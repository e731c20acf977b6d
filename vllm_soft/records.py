"""The soft-step record: one schema from the engine's packed rows to the trace, the API
JSON, the rollout ``Sample`` and the learner's replay.

Imports only numpy. The engine's worker packs a step's rows into one float64 array
(``soft_step.SoftStepOutput.packed``: K token ids, K weights, K log-weights, K multiplex
draws, L latent values (mode 'hidden'; L = 0 when no row of the step is), then ``PACKED_COLUMNS``),
the scheduler hands a finished request's rows out as ``pack_trace`` blocks, and the front
end turns them into ``SoftStep`` entries (``unpack_trace``): the only place a packed row
becomes a record.
"""

from typing import TypedDict

import numpy as np

END_REASONS = (None, "think_end", "cold_stop", "budget")
"""``end_code`` -> end reason; code 0: thinking goes on."""

PACKED_COLUMNS = (
    "kept", "entropy", "emitted", "logprob", "noise_scale", "seed_low", "seed_high", "gate_retention",
    "latent_size", "end_code",
)
"""Columns of a packed row after its four blocks of K slots (ids, weights, log-weights,
draws) and its L latent values; the last two are fixed, so a row's layout reads from its
end: ``row[LATENT_SIZE]`` is L, ``row[END_CODE]`` the end code."""
SLOT_BLOCKS = 4
LATENT_SIZE, END_CODE = -2, -1


class SoftStep(TypedDict):
    """One soft step of a request, as the engine took it (a JSON object over the API and in
    rollout files)."""

    position: int
    """Index of the step's emitted token in the completion's token ids (soft step k is at k)."""
    token_ids: list[int]
    """The kept support, by descending probability."""
    weights: list[float]
    """The mixture weights fed back (after noise or multiplex draws), one per token id; they sum to 1."""
    log_weights: list[float | None]
    """Their logs, computed in log space (exact where a noisy weight underflows to 0, as a
    noise density needs); None where a weight is exactly 0 (an undrawn multiplex token)."""
    draws: list[int] | None
    """Multiplex steps: per token id, how many draws took it (with replacement) or its draw
    rank, 1 first, 0 undrawn (without replacement); None for other steps."""
    noise_scale: float | None
    """Gaussian noise: its standard deviation (absolute; the knob ``sigma`` times the
    embedding table's RMS entry); the fed-back concept is the mixture plus noise_scale * n,
    n the standard normals of (``seed``, step). None for other steps."""
    seed: int
    """The request's soft-step seed: every draw of soft step k is a function of (seed, k)
    (``vllm_soft.stateless_random``), so a replay can regenerate the step's noise."""
    gate_retention: float | None
    """Mode 'gate': the mean over dimensions of HRPO's gate a, the share of the emitted
    token's embedding in the next input (the latent's is sqrt(1 - a^2)); None in other modes."""
    latent: list[float] | None
    """Mode 'hidden', a latent step: the vector fed back as the next input, the previous
    position's final-normed last hidden state (rescaled if ``rescale_latent``), H floats (the
    model's hidden size) holding the model dtype's values exactly (float64 in the packed
    trace; JSON numbers over the API: about 12 bytes each, ~7 kB per step at H = 576).
    None for other steps."""
    entropy: float
    """Entropy (nats) of the step's full tempered distribution (what cold stop compares)."""
    emitted: int
    """The token id the text shows at ``position``."""
    logprob: float | None
    """Rollout log-probability of the step's action; None for a token forced by cold stop
    or the budget, or a latent step's placeholder (no choice of the policy)."""
    end_reason: str | None
    """None while thinking goes on, else why it ended at this step: think_end, cold_stop, budget."""


def _layout(row: np.ndarray) -> tuple[int, int]:
    """(K slots, L latent values) of a packed row."""
    latent_size = int(row[LATENT_SIZE])
    return (row.shape[0] - latent_size - len(PACKED_COLUMNS)) // SLOT_BLOCKS, latent_size


def _latent_columns(slots: int, latent_size: int) -> slice:
    """Where a row of layout (K, L) keeps its latent values: after its four slot blocks."""
    return slice(SLOT_BLOCKS * slots, SLOT_BLOCKS * slots + latent_size)


def row_support(row: np.ndarray) -> tuple[list[int], list[float]]:
    """(token ids, weights) of the support of one packed row."""
    slots, latent_size = _layout(row)
    kept = int(row[SLOT_BLOCKS * slots + latent_size])
    return row[:kept].astype(np.int64).tolist(), row[slots : slots + kept].tolist()


def row_latent(row: np.ndarray) -> np.ndarray | None:
    """The latent vector a packed row fed back (float64 view), or None."""
    slots, latent_size = _layout(row)
    latent = row[_latent_columns(slots, latent_size)]
    return latent if latent_size and not np.isnan(latent[0]) else None


def unpack_rows(payload: np.ndarray, first_position: int = 0) -> list[SoftStep]:
    """Packed rows of one layout (K, L) as records, row i at soft step ``first_position +
    i``; columns are converted for all rows at once, then sliced."""
    slots, latent_size = _layout(payload[0]) if payload.shape[0] else (0, 0)
    token_ids = payload[:, :slots].astype(np.int64).tolist()
    weights = payload[:, slots : 2 * slots].tolist()
    log_weights = np.where(np.isfinite(payload[:, 2 * slots : 3 * slots]), payload[:, 2 * slots : 3 * slots], np.nan).tolist()
    draws = payload[:, 3 * slots : 4 * slots].astype(np.int64)
    multiplexed = draws.any(axis=1).tolist()
    draws = draws.tolist()
    latents = payload[:, _latent_columns(slots, latent_size)]
    latent_rows = ~np.isnan(latents[:, 0]) if latent_size else np.zeros(payload.shape[0], bool)
    columns = SLOT_BLOCKS * slots + latent_size
    column = {name: payload[:, columns + c] for c, name in enumerate(PACKED_COLUMNS)}
    kept, emitted, end_code = (column[name].astype(np.int64).tolist() for name in ("kept", "emitted", "end_code"))
    entropy, logprob, noise_scale, retention = (
        column[name].tolist() for name in ("entropy", "logprob", "noise_scale", "gate_retention")
    )
    seeds = (column["seed_high"].astype(np.uint64) << np.uint64(32) | column["seed_low"].astype(np.uint64)).tolist()
    return [
        SoftStep(
            position=first_position + row,
            token_ids=token_ids[row][: kept[row]],
            weights=weights[row][: kept[row]],
            log_weights=[None if value != value else value for value in log_weights[row][: kept[row]]],
            draws=draws[row][: kept[row]] if multiplexed[row] else None,
            noise_scale=noise_scale[row] or None,
            seed=seeds[row],
            gate_retention=None if retention[row] != retention[row] else retention[row],  # NaN: not gated
            latent=latents[row].tolist() if latent_rows[row] else None,
            entropy=entropy[row],
            emitted=emitted[row],
            logprob=None if logprob[row] != logprob[row] else logprob[row],  # NaN: a forced token
            end_reason=END_REASONS[end_code[row]],
        )
        for row in range(payload.shape[0])
    ]


def pack_trace(rows: list[np.ndarray]) -> list[dict]:
    """A request's packed rows, in step order, in the form the trace crosses processes in:
    runs of rows of one layout as {"shape", "data": float64 bytes} blocks (plain msgpack
    types; a step's width is 4K + L + 10 for the largest top-k K of its batch and L the
    hidden size if a row of the batch is in mode 'hidden', else 0)."""
    blocks, start = [], 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or _layout(rows[end]) != _layout(rows[start]):
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
