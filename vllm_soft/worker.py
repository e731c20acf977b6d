"""Soft thinking inside one vLLM worker: per-request state, the batched step, injection.

One ``SoftThinkingRunner`` hangs off each model runner (``runner.vllm_soft``). Per
engine step, driven by the patches in ``patches/model_runner.py``:

    execute_model ─► _preprocess ─► inject(): for every scheduled position that follows a
                                    soft step, overwrite its input embedding with the
                                    recorded mixture (decode: 1 position; recompute after
                                    preemption: many, rebuilt from the same records)
    sample_tokens ─► _sample ─────► begin_sampling(): which logits rows are soft
                     Sampler.sample ► propose(): soft step on those rows, before temperature;
                                    the emitted tokens replace vLLM's samples
                   ◄ output ◄─────── commit(): rows whose token was kept (not a discarded
                                    partial prefill) advance their state and add a trace entry

State is keyed by request id (batch rows move between steps) and lives until vLLM
reports the request finished, so a preempted request keeps its mixtures.
"""

import math
from dataclasses import dataclass, field

import torch

from vllm_soft import soft_math
from vllm_soft.params import SoftThinkingParams, request_overrides


@dataclass
class SoftRequestState:
    """One soft request's progress through its soft span."""

    params: SoftThinkingParams
    generator: torch.Generator | None
    num_prompt_tokens: int
    soft_steps: int = 0
    low_entropy_streak: int = 0
    end_reason: str | None = None
    mixtures: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    """Absolute position -> (token ids, weights) whose mixture is that position's input."""
    unsent_trace: list[dict] = field(default_factory=list)
    """Trace entries not yet handed to the scheduler."""


@dataclass
class SoftProposal:
    """The soft step computed for one logits row, before vLLM decides to keep the sample."""

    req_id: str
    row: int
    token_ids: list[int]
    weights: list[float]
    entropy: float
    emitted: int
    logprob: float | None
    end_reason: str | None
    low_entropy_streak: int
    generator_state: torch.Tensor | None
    """The request's generator before this step drew from it (restored if vLLM discards the step)."""


class SoftThinkingRunner:
    """Soft-thinking bookkeeping for one model runner."""

    def __init__(self, defaults: SoftThinkingParams):
        self.defaults = defaults
        self.requests: dict[str, SoftRequestState] = {}
        self._proposals: list[SoftProposal] = []
        self._rows: list[tuple[int, str]] = []
        self._workspace: torch.Tensor | None = None

    # -- lifetime -----------------------------------------------------------------

    def forget(self, finished_req_ids) -> None:
        """Drop the state of requests vLLM reports finished (or aborted)."""
        for req_id in finished_req_ids:
            self.requests.pop(req_id, None)

    def state_for(self, req_id: str, cached_request) -> SoftRequestState | None:
        """The soft state of a request, created on first sight; None for plain requests."""
        state = self.requests.get(req_id)
        if state is not None:
            return state
        params = cached_request.sampling_params
        overrides = request_overrides(params.extra_args if params is not None else None)
        if overrides is None:
            return None
        knobs = self.defaults.with_overrides(overrides)
        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        state = SoftRequestState(knobs, generator, cached_request.num_prompt_tokens)
        self.requests[req_id] = state
        return state

    # -- inputs -------------------------------------------------------------------

    def inject(self, runner, input_ids, inputs_embeds):
        """Put recorded mixtures into the inputs of this step; returns (input_ids, inputs_embeds)."""
        batch = runner.input_batch
        rows, positions, mixtures = [], [], []
        starts = runner.query_start_loc.np
        for row, req_id in enumerate(batch.req_ids):
            state = self.requests.get(req_id)
            if state is None or not state.mixtures:
                continue
            computed = int(batch.num_computed_tokens_cpu[row])
            scheduled = int(starts[row + 1] - starts[row])
            for position in range(computed, computed + scheduled):
                mixture = state.mixtures.get(position)
                if mixture is not None:
                    rows.append((int(starts[row]) + position - computed, state.params))
                    mixtures.append(mixture)
        if not rows:
            return input_ids, inputs_embeds
        if inputs_embeds is None:
            # Text models take token ids; switch this step to embeddings (eager mode, or
            # prompt embeds enabled, keeps both call forms valid).
            inputs_embeds = runner.model.embed_input_ids(input_ids)
            input_ids = None
        slots = max(len(ids) for ids, _ in mixtures)
        device = inputs_embeds.device
        token_ids = torch.tensor([ids + [0] * (slots - len(ids)) for ids, _ in mixtures], device=device)
        weights = torch.tensor([ws + [0.0] * (slots - len(ws)) for _, ws in mixtures], device=device)
        concepts = soft_math.concept_embeddings(token_ids, weights, runner.model.embed_input_ids)
        for (flat_row, params), concept in zip(rows, concepts):
            mixed = soft_math.mix_input(params.mode, inputs_embeds[flat_row], concept, params.scale)
            inputs_embeds[flat_row] = mixed.to(inputs_embeds.dtype)
        return input_ids, inputs_embeds

    # -- sampling -----------------------------------------------------------------

    def begin_sampling(self, runner) -> bool:
        """Record which logits rows belong to requests in their soft span."""
        self._rows = []
        self._proposals = []
        for row, req_id in enumerate(runner.input_batch.req_ids):
            cached = runner.requests.get(req_id)
            if cached is None:
                continue
            state = self.state_for(req_id, cached)
            if state is not None and state.end_reason is None:
                self._rows.append((row, req_id))
        return bool(self._rows)

    def propose(self, logits_BV: torch.Tensor) -> list[tuple[int, int]]:
        """Soft step for the recorded rows on processed logits (before temperature).

        Returns (row, emitted token) pairs that replace vLLM's samples.
        """
        if not self._rows:
            return []
        rows = torch.tensor([row for row, _ in self._rows], device=logits_BV.device)
        knobs = [self.requests[req_id].params for _, req_id in self._rows]
        device = logits_BV.device
        dist = soft_math.filter_distribution(
            logits_BV.index_select(0, rows),
            torch.tensor([k.temperature for k in knobs], device=device),
            torch.tensor([k.top_k for k in knobs], device=device),
            torch.tensor([k.top_p for k in knobs], device=device),
            torch.tensor([k.min_p for k in knobs], device=device),
            self._workspace_for(logits_BV, len(self._rows)),
        )
        # One transfer for the whole batch; the per-row work below is plain Python unless
        # a row asks for noise or sampled emission. The kept support is always a prefix of
        # the candidates (every filter cuts the descending list), so it is a count.
        token_ids = dist.token_ids_BK.tolist()
        weights = dist.weights_BK.tolist()
        kept_counts = dist.kept_BK.sum(-1).tolist()
        entropy = dist.entropy_B.tolist()
        replacements = []
        for i, (row, req_id) in enumerate(self._rows):
            state = self.requests[req_id]
            knobs = state.params
            kept = kept_counts[i]
            ids_K, weights_K = token_ids[i][:kept], weights[i][:kept]
            generator_state = state.generator.get_state() if state.generator is not None else None
            base_K = weights_K
            if knobs.noise != "none":  # float64 weights: their density needs the tiny ones
                noisy = soft_math.apply_noise(
                    torch.tensor(weights_K, dtype=torch.float64), knobs.noise, knobs.alpha, knobs.tau, state.generator
                )
                weights_K = noisy.tolist()
            if knobs.emit == "argmax":
                slot = max(range(kept), key=weights_K.__getitem__)
            else:
                slot = soft_math.emit_index(torch.tensor(weights_K), knobs.emit, state.generator)
            emitted, streak, end_reason = soft_math.thinking_transition(
                emitted=ids_K[slot],
                entropy=entropy[i],
                low_entropy_streak=state.low_entropy_streak,
                soft_steps_done=state.soft_steps,
                think_end_id=knobs.think_end_id,
                entropy_threshold=knobs.entropy_threshold,
                patience=knobs.patience,
                max_soft_steps=knobs.max_soft_steps,
            )
            # A token forced by cold stop or the budget was no action of the policy: no log-probability.
            logprob = None if emitted != ids_K[slot] else _step_logprob(base_K, weights_K, slot, knobs)
            self._proposals.append(
                SoftProposal(req_id, row, ids_K, weights_K, entropy[i], emitted, logprob, end_reason, streak, generator_state)
            )
            replacements.append((row, emitted))
        return replacements

    def _workspace_for(self, logits_BV: torch.Tensor, rows: int) -> torch.Tensor:
        """A float32 (rows, V) scratch buffer for the soft step, kept across steps."""
        vocab = logits_BV.shape[1]
        workspace = self._workspace
        if workspace is None or workspace.shape[0] < rows or workspace.shape[1] != vocab or workspace.device != logits_BV.device:
            grown = 2 * workspace.shape[0] if workspace is not None else 8  # geometric: few reallocations
            workspace = torch.empty(max(rows, grown), vocab, dtype=torch.float32, device=logits_BV.device)
            self._workspace = workspace
        return workspace

    def commit(self, runner, sampled_token_ids: list[list[int]]) -> dict[str, list[dict]]:
        """Advance the rows whose sample vLLM kept; return new trace entries by request id."""
        new_entries: dict[str, list[dict]] = {}
        for proposal in self._proposals:
            state = self.requests[proposal.req_id]
            if not sampled_token_ids[proposal.row]:  # a partial prefill chunk: vLLM discarded this sample
                if proposal.generator_state is not None:
                    state.generator.set_state(proposal.generator_state)
                continue
            position = runner.requests[proposal.req_id].num_tokens - 1
            state.soft_steps += 1
            state.low_entropy_streak = proposal.low_entropy_streak
            state.end_reason = proposal.end_reason
            if proposal.end_reason is None:
                state.mixtures[position] = (proposal.token_ids, proposal.weights)
            entry = {
                "position": position - state.num_prompt_tokens,
                "token_ids": proposal.token_ids,
                "weights": proposal.weights,
                "entropy": proposal.entropy,
                "emitted": proposal.emitted,
                "logprob": proposal.logprob,
                "end_reason": proposal.end_reason,
            }
            new_entries.setdefault(proposal.req_id, []).append(entry)
        self._proposals = []
        self._rows = []
        return new_entries


def _step_logprob(base_K: list[float], weights_K: list[float], slot: int, knobs: SoftThinkingParams) -> float:
    """``soft_math.soft_step_logprob`` of one row: log base_y without noise, else the noise density."""
    if knobs.noise == "none":
        return math.log(base_K[slot])
    emitted = torch.zeros(1, len(base_K), dtype=torch.bool)
    emitted[0, slot] = True
    logprob = soft_math.soft_step_logprob(
        torch.tensor([base_K], dtype=torch.float64).log(), torch.tensor([weights_K], dtype=torch.float64),
        torch.ones_like(emitted), emitted, knobs.noise, knobs.alpha, knobs.tau, knobs.emit,
    )
    return float(logprob[0])
