"""Soft thinking inside one vLLM worker: per-request state in slot tables, the batched step,
the next step's inputs.

One ``SoftThinkingRunner`` hangs off each V1 model runner (``runner.vllm_soft``). It never
reads vLLM's objects: the patches in ``patches/model_runner.py`` hand it a ``BatchView``
of the step (plain host arrays), the logits and the model's embedding function, and one
method's result is the next one's input (plan -> run -> commit). Per engine step:

    _update_states ► register() new soft requests (a slot each), forget() finished ones
    _preprocess ───► inject(): rows whose scheduled positions include a soft input get it
                     from the slot's pending input (decode: one indexed copy for the batch);
                     positions recomputed after a preemption are rebuilt from the records
    sample_tokens ─► step_hidden: the sampled rows' last hidden states (mode 'hidden')
    _sample ───────► plan(): which logits rows are soft (thinking, sample not discarded)
      Sampler.sample ► run(): ``soft_step`` on those rows, before vLLM samples; writes next
                     inputs and progress by slot, starts the one device→host copy; the
                     emitted tokens replace vLLM's samples (one indexed copy)
    sample_tokens ─► commit(): reads the copy, advances host state, returns the step's trace rows

Device state lives in tables indexed by slot (knobs, progress, pending input), so a step
gathers what it needs with a few index operations whatever the batch; the host keeps
what it must decide on (which rows are soft, where the next soft input goes) in numpy
mirrors. A request keeps its slot until vLLM reports it finished, so a preempted request
keeps its state. Randomness is ``stateless_random``: a function of (seed, soft step).
"""

from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
import torch
from vllm.utils.platform_utils import is_pin_memory_available

from vllm_soft import gate as soft_gate
from vllm_soft import records, replay, soft_math, soft_step, stateless_random
from vllm_soft.log import logger
from vllm_soft.params import SoftThinkingParams, request_overrides


WORKSPACE_ROWS = 256
"""Most rows the soft step's vocabulary-sized scratch holds (2 x 256 x 152k float32 = 311 MB
for Qwen's vocabulary); bigger batches run their vocabulary pass 256 rows at a time."""

ACTIVE_STEP: ContextVar["SoftStepPlan | None"] = ContextVar("vllm_soft_active_step", default=None)
"""The plan of the soft step the sampler must run now (set around ``GPUModelRunner._sample``)."""


@dataclass
class SoftRequestState:
    """One soft request's progress, on the host."""

    params: SoftThinkingParams
    slot: int
    first_soft_position: int
    """Absolute position of the first generated token: soft step k emits position first + k."""
    soft_steps: int = 0
    mixtures: list[np.ndarray] = field(default_factory=list)
    """Packed row (``SoftStepOutput.packed()``) of soft step k, whose mixture (or latent) is
    the input at ``first_soft_position + k``, for every step that fed one back: what a
    recompute after preemption rebuilds."""


@dataclass
class SoftStepRows:
    """The soft steps of one engine step, for the trace: ``payload[i]`` (a row of
    ``SoftStepOutput.packed()``) is the next soft step of request ``req_ids[i]``."""

    req_ids: list[str]
    payload: np.ndarray


@dataclass
class BatchView:
    """What the soft step reads of one engine step's batch, as plain host data: built from
    vLLM's model runner by ``patches/model_runner.py`` (tests build it directly)."""

    req_ids: list[str]
    """Request of each batch row."""
    query_starts: np.ndarray
    """(rows + 1,) int: flat index of each row's first scheduled token; the last is the total."""
    num_computed: np.ndarray
    """(rows,) int64: tokens of each request computed before this step (its first scheduled position)."""
    discarded: np.ndarray
    """(rows,) bool: rows whose sample vLLM discards this step (a prefill chunk that does not end the prompt)."""


@dataclass
class SoftStepPlan:
    """Which rows of this step's logits are soft, and their gathered knobs."""

    rows: list[int]
    req_ids: list[str]
    all_rows: bool
    """Every row of the logits is soft (no row selection needed)."""
    rows_dev: torch.Tensor
    slots_dev: torch.Tensor
    knobs: soft_step.StepKnobs
    payload: torch.Tensor | None = None
    """The packed step output on the host (or in flight to it)."""
    copied: object = None
    """CUDA event recorded after the device→host copy (None on CPU)."""
    run: object = None
    """``SoftThinkingRunner.run`` bound to this plan and the model's embedding (set by the patch)."""


class SoftThinkingRunner:
    """Soft-thinking state and step for one model runner (``patches/model_runner.py`` feeds
    it plain data: ``BatchView``s, logits, the model's embedding function)."""

    def __init__(
        self,
        defaults: SoftThinkingParams,
        device: torch.device,
        vocab_size: int,
        hidden_size: int,
        dtype: torch.dtype,
        engine_seed: int | None,
        max_num_reqs: int,
        compile_step: bool = True,
        model_path: str | None = None,
    ):
        self.defaults = defaults
        self.device = device
        # Asked of the platform, as vLLM's V1 runner does at import (its PIN_MEMORY): the
        # runner has no attribute to read, and a pageable host buffer would make the
        # step's one device-to-host copy synchronous.
        self.pin_memory = device.type == "cuda" and is_pin_memory_available()
        self.vocab_size, self.hidden_size, self.dtype = vocab_size, hidden_size, dtype
        self.engine_seed = engine_seed
        self.max_num_reqs = max_num_reqs
        self.requests: dict[str, SoftRequestState] = {}
        self._free_slots: list[int] = []
        self._capacity = 0
        self._grow(self.max_num_reqs)
        self._workspace: torch.Tensor | None = None
        self.compiled = _compiled_step(vocab_size, device, defaults.top_k) if compile_step else None
        self._pinned: torch.Tensor | None = None
        self._embedding_rms: float | None = None
        self.model_path = model_path
        """The model folder, where mode 'gate' finds the model's gate (``vllm_soft.gate``)."""
        self._gate: soft_math.GateTensors | None = None
        self.step_hidden: torch.Tensor | None = None
        """This engine step's final-normed last hidden states, one row per logits row (set
        by the patch before sampling, cleared after): what mode 'hidden' feeds back."""
        self.current_plan: SoftStepPlan | None = None
        """The plan whose step ran in this engine step, until ``commit``."""

    # -- slot tables ----------------------------------------------------------------

    def _grow(self, capacity: int) -> None:
        """(Re)allocate the slot tables for ``capacity`` requests, keeping their contents."""
        floats, ints = len(soft_step.FLOAT_COLUMNS), len(soft_step.INT_COLUMNS)
        device = self.device
        self.floats_SF = _grown(getattr(self, "floats_SF", None), (capacity, floats), 0.0, torch.float64, device)
        self.ints_SI = _grown(getattr(self, "ints_SI", None), (capacity, ints), 0, torch.int64, device)
        self.progress_S2 = _grown(getattr(self, "progress_S2", None), (capacity, 2), 0, torch.int64, device)
        """Per slot: soft steps taken, low-entropy streak (updated on the device by each step)."""
        self.pending_SH = _grown(getattr(self, "pending_SH", None), (capacity, self.hidden_size), 0.0, self.dtype, device)
        """Per slot: the input of the position its last soft step emitted (while thinking)."""
        self.ints_np = _grown(getattr(self, "ints_np", None), (capacity, ints), 0, torch.int64, "cpu").numpy()
        self.thinking_np = _grown(getattr(self, "thinking_np", None), (capacity,), False, torch.bool, "cpu").numpy()
        self.first_position_np = _grown(getattr(self, "first_position_np", None), (capacity,), 0, torch.int64, "cpu").numpy()
        self.mixture_end_np = _grown(getattr(self, "mixture_end_np", None), (capacity,), 0, torch.int64, "cpu").numpy()
        """Per slot: one past the last position whose input is a recorded mixture."""
        self.pending_position_np = _grown(getattr(self, "pending_position_np", None), (capacity,), -1, torch.int64, "cpu").numpy()
        """Per slot: the position ``pending_SH`` holds the input of, -1 when none (not thinking)."""
        self._free_slots.extend(range(capacity - 1, self._capacity - 1, -1))  # pop() hands out low slots first
        self._capacity = capacity

    # -- lifetime -------------------------------------------------------------------

    def register(self, req_id: str, sampling_params, num_prompt_tokens: int) -> None:
        """Give a new soft request a slot and write its knobs; plain requests are ignored."""
        overrides = request_overrides(sampling_params.extra_args if sampling_params is not None else None)
        if overrides is None or req_id in self.requests:
            return
        params = self.defaults.with_overrides(overrides)
        if params.mode == "hidden" and params.max_soft_steps == 0:
            return  # no latent step: plain decoding (an empty trace tells the caller)
        if not self._free_slots:
            self._grow(2 * self._capacity)
        slot = self._free_slots.pop()
        seed = stateless_random.request_seed(sampling_params.seed, self.engine_seed, req_id)
        floats, ints = soft_step.knob_row(params, seed)
        self.floats_SF[slot] = torch.tensor(floats, dtype=torch.float64)
        self.ints_SI[slot] = torch.tensor(ints, dtype=torch.int64)
        self.progress_S2[slot] = 0
        self.ints_np[slot] = ints
        self.pending_position_np[slot] = -1
        self.thinking_np[slot] = True
        self.first_position_np[slot] = self.mixture_end_np[slot] = num_prompt_tokens
        self.requests[req_id] = SoftRequestState(params, slot, num_prompt_tokens)

    def forget(self, finished_req_ids) -> None:
        """Free the slots of requests vLLM reports finished (or aborted)."""
        for req_id in finished_req_ids:
            state = self.requests.pop(req_id, None)
            if state is not None:
                self.thinking_np[state.slot] = False
                self.pending_position_np[state.slot] = -1
                self._free_slots.append(state.slot)

    def _row_slots(self, req_ids) -> np.ndarray:
        """Slot of each batch row, -1 for plain requests (one dict lookup per row, no device work)."""
        requests = self.requests
        return np.fromiter(
            (requests[r].slot if r in requests else -1 for r in req_ids), dtype=np.int64, count=len(req_ids)
        )

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        """A small int64 host array on the device, copied without blocking on CUDA."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    # -- inputs ---------------------------------------------------------------------

    def inject(self, view: BatchView, input_ids, inputs_embeds, embed):
        """Put soft inputs into this step's input embeddings (``embed``: the model's token
        embedding, for text models that were given ids); returns (input_ids, inputs_embeds)."""
        if not self.requests:
            return input_ids, inputs_embeds
        slots = self._row_slots(view.req_ids)
        live = slots >= 0
        if not live.any():
            return input_ids, inputs_embeds
        starts, computed = view.query_starts, view.num_computed
        end = computed + (starts[1:] - starts[:-1])
        known = np.maximum(slots, 0)
        pending = np.where(live, self.pending_position_np[known], -1)
        fast = live & (pending >= computed) & (pending < end)
        # Recorded mixtures before the pending one (all of them once thinking ended) are
        # scheduled again only when a preempted request is recomputed.
        rebuild_from = np.maximum(computed, self.first_position_np[known])
        rebuild_to = np.minimum(end, np.where(pending >= 0, pending, self.mixture_end_np[known]))
        rebuild = np.flatnonzero(live & (rebuild_to > rebuild_from))
        if not fast.any() and rebuild.size == 0:
            return input_ids, inputs_embeds
        if inputs_embeds is None:
            # Text models take token ids; switch this step to embeddings (eager mode, or
            # prompt embeds enabled, keeps both call forms valid).
            inputs_embeds = embed(input_ids)
            input_ids = None
        if fast.any():
            flat = starts[:-1][fast] + pending[fast] - computed[fast]
            indices = self._upload(np.stack([flat, slots[fast]]))
            inputs_embeds[indices[0]] = self.pending_SH.index_select(0, indices[1]).to(inputs_embeds.dtype)
        if rebuild.size:
            self._rebuild(view, inputs_embeds, embed, rebuild, rebuild_from, rebuild_to)
        return input_ids, inputs_embeds

    def _rebuild(self, view: BatchView, inputs_embeds, embed, rows, rebuild_from, rebuild_to) -> None:
        """Inputs of recorded soft positions scheduled again (a recompute after preemption),
        from the host records, with the learner's replay functions. Not on the decode path."""
        starts, computed = view.query_starts, view.num_computed
        flat, steps, add, scale, gated, latents = [], [], [], [], [], {}
        for row in rows.tolist():
            state = self.requests[view.req_ids[row]]
            first = state.first_soft_position
            for position in range(int(rebuild_from[row]), int(rebuild_to[row])):
                packed = state.mixtures[position - first]
                flat_index = int(starts[row]) + position - int(computed[row])
                latent = records.row_latent(packed)
                if latent is not None:  # mode 'hidden': the recorded vector itself
                    latents[flat_index] = latent
                    continue
                steps += records.unpack_rows(packed[None], first_position=position - first)
                flat.append(flat_index)
                add.append(state.params.mode == "add")
                scale.append(state.params.scale)
                gated.append(state.params.mode == "gate")
        device = inputs_embeds.device
        if latents:
            vectors = torch.from_numpy(np.stack(list(latents.values()))).to(device, inputs_embeds.dtype)
            inputs_embeds[torch.tensor(list(latents), device=device)] = vectors
        if not flat:
            return
        flat_B = torch.tensor(flat, device=device)
        concept = replay.recorded_concepts(steps, embed, device)
        tokens = inputs_embeds[flat_B]  # E[emitted]: each position's token is its step's emitted one
        mixed = soft_math.mix_inputs(torch.tensor(add, device=device), tokens, concept, torch.tensor(scale, device=device))
        if any(gated):
            rows_G = torch.tensor(gated, device=device)
            latent = replay.recorded_latents([step for step, g in zip(steps, gated) if g], embed, device)
            mixed[rows_G] = soft_math.gated_inputs(tokens[rows_G], latent, self.gate())[0].float()
        inputs_embeds[flat_B] = mixed.to(inputs_embeds.dtype)

    # -- the step -------------------------------------------------------------------

    def plan(self, view: BatchView) -> SoftStepPlan | None:
        """The soft rows of this step: requests still thinking whose sample vLLM keeps."""
        if not self.requests:
            return None
        num_reqs = len(view.req_ids)
        slots = self._row_slots(view.req_ids)
        soft = (slots >= 0) & self.thinking_np[np.maximum(slots, 0)] & ~view.discarded
        rows = np.flatnonzero(soft)
        if rows.size == 0:
            return None
        soft_slots = slots[rows]
        indices = self._upload(np.stack([rows, soft_slots]))
        slots_dev = indices[1]
        progress = self.progress_S2.index_select(0, slots_dev)
        knobs = soft_step.StepKnobs.from_rows(
            self.floats_SF.index_select(0, slots_dev),
            self.ints_SI.index_select(0, slots_dev),
            self.ints_np[soft_slots],
            progress[:, 0],
            progress[:, 1],
        )
        req_ids = [view.req_ids[row] for row in rows]
        return SoftStepPlan(rows.tolist(), req_ids, rows.size == num_reqs, indices[0], slots_dev, knobs)

    def run(self, plan: SoftStepPlan, logits_BV: torch.Tensor, embed) -> torch.Tensor:
        """The soft step for the plan's rows; returns their emitted tokens (on the device)."""
        soft_logits = logits_BV if plan.all_rows else logits_BV.index_select(0, plan.rows_dev)
        knobs = plan.knobs
        if "gaussian" in knobs.noise_kinds:  # the gathered copy: sigma in embedding units -> absolute
            knobs.floats_BF[:, soft_step.SIGMA] *= self.embedding_rms(embed)
        hidden_BH = None
        if knobs.any_hidden:
            if self.step_hidden is None:
                raise RuntimeError("mode 'hidden': this step's hidden states were not captured before sampling")
            hidden_BH = self.step_hidden if plan.all_rows else self.step_hidden.index_select(0, plan.rows_dev)
        latent_norm = self.embedding_rms(embed) * self.hidden_size**0.5 if knobs.any_rescale_latent else 0.0
        out = soft_step.soft_step(
            soft_logits, knobs, embed, self._workspace_for(logits_BV), self.compiled, self.hidden_size,
            self.gate() if knobs.any_gate else None, hidden_BH, latent_norm,
        )
        self.pending_SH.index_copy_(0, plan.slots_dev, out.next_inputs_BH.to(self.dtype))
        progress = torch.stack((plan.knobs.soft_steps_done_B + 1, out.low_entropy_streak_B), dim=-1)
        self.progress_S2.index_copy_(0, plan.slots_dev, progress)
        plan.payload, plan.copied = self._to_host(out.packed())
        return out.emitted_B

    def embedding_rms(self, embed) -> float:
        """The input embedding table's RMS entry (``soft_math.embedding_rms``): computed on
        first use and kept until ``weights_changed``."""
        if self._embedding_rms is None:
            self._embedding_rms = soft_math.embedding_rms(embed, self.vocab_size, self.hidden_size, self.device)
        return self._embedding_rms

    def gate(self) -> soft_math.GateTensors:
        """The model's HRPO gate (mode 'gate'), float32 on the device: read from the model
        folder at the first gated step (H x H x 2 floats that plain and other soft requests
        never need), a seeded fresh one if the folder has none, which is logged."""
        if self._gate is None:
            if self.model_path is None:
                gate, settings, fresh = soft_gate.fresh_gate(self.hidden_size), soft_gate.GateSettings(), True
            else:  # a hub name or a folder without the files: load_gate draws the fresh gate
                gate, settings, fresh = soft_gate.load_gate(self.model_path, self.hidden_size)
            if fresh:
                logger.warning("vllm-soft: %s has no %s; mode 'gate' uses a fresh gate drawn with seed %d "
                               "(retention %.3g-%.3g)", self.model_path, soft_gate.GATE_WEIGHTS_FILE, settings.seed,
                               settings.retention_min, settings.retention_max)
            else:
                logger.info("vllm-soft: loaded the soft gate of %s", self.model_path)
            self.set_gate(gate)
        return self._gate

    @property
    def loaded_gate(self) -> soft_math.GateTensors | None:
        """The gate if a gated step loaded it or a push set it, else None (not loaded)."""
        return self._gate

    def set_gate(self, gate: soft_math.GateTensors) -> None:
        """Use ``gate`` from the next step on (a weight push's gate tensors)."""
        self._gate = soft_gate.gate_to(gate, self.device)

    def weights_changed(self) -> None:
        """Forget what was computed from the weights (after a weight update)."""
        self._embedding_rms = None

    def _to_host(self, payload: torch.Tensor):
        """Start the step's one device→host copy (pinned, non-blocking on CUDA)."""
        if self.device.type != "cuda":
            return payload, None
        rows, columns = payload.shape
        if self._pinned is None or self._pinned.numel() < payload.numel():
            self._pinned = torch.empty(2 * payload.numel(), dtype=payload.dtype, pin_memory=self.pin_memory)
        host = self._pinned[: payload.numel()].view(rows, columns)
        host.copy_(payload, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _workspace_for(self, logits_BV: torch.Tensor) -> torch.Tensor | None:
        """The float32 (2, R, V) scratch buffer of the eager vocabulary pass, kept across
        steps: R = max_num_seqs rows, at most ``WORKSPACE_ROWS`` (larger batches go R at a
        time). None with the compiled step, which needs none."""
        if self.compiled is not None:
            return None
        vocab = logits_BV.shape[1]
        workspace = self._workspace
        if workspace is None or workspace.shape[2] != vocab:
            size = min(self.max_num_reqs, WORKSPACE_ROWS)
            workspace = torch.empty(2, size, vocab, dtype=torch.float32, device=logits_BV.device)
            self._workspace = workspace
        return workspace

    def commit(self, plan: SoftStepPlan, sampled_token_ids: list[list[int]], sequence_lengths: list[int]) -> SoftStepRows:
        """Advance host state after vLLM kept the step's samples (``sequence_lengths``: each
        plan row's request length after it, a check); return the step's rows."""
        if plan.copied is not None:
            plan.copied.synchronize()
        payload = plan.payload.numpy().copy()  # the pinned buffer (CUDA) is reused next step
        went_on = (payload[:, records.END_CODE] == 0).tolist()  # end code 0: thinking goes on
        for row, req_id, values, thinking, length in zip(plan.rows, plan.req_ids, payload, went_on, sequence_lengths):
            assert sampled_token_ids[row], f"vLLM discarded the sample of soft row {row} ({req_id})"
            state = self.requests[req_id]
            position = state.first_soft_position + state.soft_steps
            assert length - 1 == position, "soft trace out of step with the sequence"
            state.soft_steps += 1
            # Mode 'hidden''s last latent step ends thinking and still feeds its latent back.
            if thinking or records.row_latent(values) is not None:
                state.mixtures.append(values)
                self.pending_position_np[state.slot] = position
                self.mixture_end_np[state.slot] = position + 1
            else:
                self.pending_position_np[state.slot] = -1
            if not thinking:
                self.thinking_np[state.slot] = False
        return SoftStepRows(plan.req_ids, payload)

    # -- memory profiling -------------------------------------------------------------

    def profile(self, num_reqs: int, embed) -> None:
        """Run the soft step once for ``num_reqs`` rows with every branch on (noise, multiplex,
        sampled emission, add and hidden modes), inside vLLM's memory profiling: its buffers and peak count
        against the KV-cache budget. Leaves no request state behind."""
        rows = max(num_reqs, 1)
        logits = torch.randn(rows, self.vocab_size, device=self.device)
        top_k = self.defaults.top_k
        branches = [
            SoftThinkingParams(top_k=top_k, noise="dirichlet", emit="sample", mode="add"),
            SoftThinkingParams(top_k=top_k, noise="gumbel"),
            SoftThinkingParams(top_k=top_k, multiplex=top_k, emit="sample", noise="none"),
            SoftThinkingParams(top_k=top_k, noise="gaussian"),
            SoftThinkingParams(top_k=top_k, mode="hidden", max_soft_steps=1, rescale_latent=True, noise="none"),
        ]
        knobs = soft_step.StepKnobs.for_requests(
            [(branches[i % len(branches)], 0, 0) for i in range(rows)], self.device
        )
        hidden = torch.randn(rows, self.hidden_size, device=self.device, dtype=self.dtype)
        out = soft_step.soft_step(
            logits, knobs, embed, self._workspace_for(logits), self.compiled, self.hidden_size,
            hidden_BH=hidden, latent_norm=1.0,
        )
        out.packed()


def _compiled_step(vocab_size: int, device: torch.device, top_k: int) -> soft_step.CompiledSoftStep | None:
    """On CPU, the soft step compiled now, at start-up (seconds; the compiler caches across
    processes). On CUDA the eager kernels stay: there they cost a small fraction of a
    decode step. Without a working compiler: the eager step, said once."""
    if device.type != "cpu":
        return None
    try:
        return soft_step.CompiledSoftStep(vocab_size, device, top_k)
    except Exception as error:  # e.g. no C++ compiler: torch.compile fails in many ways
        logger.warning("vllm-soft: could not compile the soft step (%s: %s); using eager kernels, "
                       "about 2x slower on CPU", type(error).__name__, error)
        return None


def _grown(old, shape: tuple[int, ...], fill, dtype: torch.dtype, device) -> torch.Tensor:
    """A ``shape`` tensor filled with ``fill`` whose leading rows copy ``old`` (a tensor or
    numpy array, or None)."""
    new = torch.full(shape, fill, dtype=dtype, device=device)
    if old is not None:
        new[: old.shape[0]] = torch.as_tensor(old)
    return new
