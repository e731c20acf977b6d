"""One soft step for every soft row of an engine step, as batched tensor work.

Imports only torch (and the pure modules beside it), so it runs, and is tested, without
an engine. The worker (``vllm_soft.worker``) gathers each row's knobs and progress from
its slot tables, calls ``soft_step`` on the processed logits, writes the next inputs back
by slot and copies ``SoftStepOutput.packed()`` to the host once.

    knobs (gathered by slot) ─┐
    logits_BV ──filter──► weights_BK ──noise(seed, step)──► fed-back weights_BK
                  │                                              │
                  └─ entropy_B     emission(seed, step) ◄────────┤
                                   cold stop / budget ──► emitted_B, end_code_B
                                   concept + mixing ─────► next_inputs_BH
                                   rollout log-prob ─────► logprob_B

Nothing here reads a value back to the host: the caller passes what the host already
knows (the largest top-k, which noise kinds and emissions occur) as plain Python values.

Shape suffixes: B soft rows, V vocabulary, K support slots, H hidden size.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from vllm_soft import soft_math, stateless_random
from vllm_soft.params import SoftThinkingParams

# Column layout of the per-request knob rows (``knob_row``) and of the gathered tensors.
FLOAT_COLUMNS = ("temperature", "top_p", "min_p", "alpha", "tau", "scale", "entropy_threshold", "sigma")
INT_COLUMNS = (
    "top_k", "noise", "emit", "mode", "think_end_id", "patience", "max_soft_steps", "seed",
    "multiplex", "multiplex_replacement", "multiplex_weights", "action", "latent_token_id", "rescale_latent",
)
(TEMPERATURE, TOP_P, MIN_P, ALPHA, TAU, SCALE, ENTROPY_THRESHOLD, SIGMA) = range(len(FLOAT_COLUMNS))
(
    TOP_K, NOISE, EMIT, MODE, THINK_END_ID, PATIENCE, MAX_SOFT_STEPS, SEED,
    MULTIPLEX, MULTIPLEX_REPLACEMENT, MULTIPLEX_WEIGHTS, ACTION, LATENT_TOKEN_ID, RESCALE_LATENT,
) = range(len(INT_COLUMNS))


def knob_row(params: SoftThinkingParams, seed: int, embedding_rms: float = 1.0) -> tuple[list[float], list[int]]:
    """A request's knobs as one float row and one int row (``FLOAT_COLUMNS``, ``INT_COLUMNS``);
    absent think-end or latent token: -1, no budget: 0; ``seed``: the request's 64-bit
    soft-step seed; sigma: absolute, ``params.sigma`` times the embedding table's RMS entry
    ``embedding_rms``."""
    assert params.noise != "auto", "noise 'auto' is resolved per request by the front end (params.resolve_randomness)"
    floats = [
        params.temperature, params.top_p, params.min_p, params.alpha, params.tau, params.scale,
        params.entropy_threshold, params.sigma * embedding_rms,
    ]
    ints = [
        params.top_k,
        soft_math.NOISE_CODES[params.noise],
        soft_math.EMIT_CODES[params.emit],
        soft_math.MODE_CODES[params.mode],
        -1 if params.think_end_id is None else params.think_end_id,
        params.patience,
        params.max_soft_steps or 0,
        stateless_random.as_int64(seed),
        params.multiplex,
        int(params.multiplex_replacement),
        soft_math.MIXTURE_CODES[params.multiplex_weights],
        soft_math.ACTION_CODES[params.action],
        -1 if params.latent_token_id is None else params.latent_token_id,
        int(params.rescale_latent),
    ]
    return floats, ints


@dataclass
class StepKnobs:
    """The knobs and progress of the soft rows of one step, on the logits' device."""

    floats_BF: torch.Tensor
    """float64, columns ``FLOAT_COLUMNS``."""
    ints_BI: torch.Tensor
    """int64, columns ``INT_COLUMNS``."""
    soft_steps_done_B: torch.Tensor
    """int64: soft steps each request took before this one (the random draws' counter)."""
    low_entropy_streak_B: torch.Tensor
    """int64: consecutive low-entropy steps before this one (cold stop)."""
    max_k: int
    """The largest top_k among the rows (known on the host)."""
    noise_kinds: frozenset[str]
    """Noise kinds among the rows ('none', 'dirichlet', 'gumbel', 'gaussian')."""
    any_sample: bool
    """Whether some row samples its emitted token."""
    any_add: bool
    """Whether some row mixes in mode 'add'."""
    any_gate: bool = False
    """Whether some row mixes in mode 'gate' (HRPO's gate)."""
    any_hidden: bool = False
    """Whether some row is in mode 'hidden' (Coconut's latents)."""
    any_rescale_latent: bool = False
    """Whether some row rescales its hidden state (``rescale_latent``)."""
    max_multiplex: int = 0
    """The most multiplex draws among the rows (0: no row multiplexes)."""

    @classmethod
    def from_rows(
        cls,
        floats_BF: torch.Tensor,
        ints_BI: torch.Tensor,
        host_ints_BI: np.ndarray,
        soft_steps_done_B: torch.Tensor,
        low_entropy_streak_B: torch.Tensor,
    ) -> "StepKnobs":
        """Knobs of gathered rows; the host flags are read from ``host_ints_BI``, the same
        int rows held on the host as numpy (so deciding them never waits on the device,
        and costs microseconds)."""
        noise_names = {code: name for name, code in soft_math.NOISE_CODES.items()}
        return cls(
            floats_BF=floats_BF,
            ints_BI=ints_BI,
            soft_steps_done_B=soft_steps_done_B,
            low_entropy_streak_B=low_entropy_streak_B,
            max_k=int(host_ints_BI[:, TOP_K].max()),
            noise_kinds=frozenset(noise_names[code] for code in np.unique(host_ints_BI[:, NOISE]).tolist()),
            any_sample=bool((host_ints_BI[:, EMIT] == soft_math.EMIT_CODES["sample"]).any()),
            any_add=bool((host_ints_BI[:, MODE] == soft_math.MODE_CODES["add"]).any()),
            any_gate=bool((host_ints_BI[:, MODE] == soft_math.MODE_CODES["gate"]).any()),
            any_hidden=bool((host_ints_BI[:, MODE] == soft_math.MODE_CODES["hidden"]).any()),
            any_rescale_latent=bool(host_ints_BI[:, RESCALE_LATENT].any()),
            max_multiplex=int(host_ints_BI[:, MULTIPLEX].max()),
        )

    @classmethod
    def for_requests(
        cls, rows: list[tuple[SoftThinkingParams, int, int]], device="cpu", embedding_rms: float = 1.0
    ) -> "StepKnobs":
        """Knobs of (params, seed, soft steps done) rows, streaks 0: for a step without slot
        tables (memory profiling, tests)."""
        floats, ints = zip(*(knob_row(params, seed, embedding_rms) for params, seed, _ in rows))
        host_ints = np.array(ints, dtype=np.int64)
        return cls.from_rows(
            torch.tensor(floats, dtype=torch.float64, device=device),
            torch.from_numpy(host_ints).to(device),
            host_ints,
            torch.tensor([steps for _, _, steps in rows], dtype=torch.int64, device=device),
            torch.zeros(len(rows), dtype=torch.int64, device=device),
        )


@dataclass
class SoftStepOutput:
    """The soft step of every soft row; all tensors on the logits' device."""

    token_ids_BK: torch.Tensor
    """Candidate ids by descending probability (int64); the first ``kept_B`` are the support."""
    weights_BK: torch.Tensor
    """Weights fed back (after noise or multiplex draws), float64, 0 off the support."""
    log_weights_BK: torch.Tensor
    """Their logs, computed in log space (float64, -inf where a weight is 0): exact where
    noisy weights underflow, which the noise densities need."""
    draws_BK: torch.Tensor
    """Multiplex draws per slot (``records.SoftStep.draws``), int64; 0 without multiplex."""
    kept_B: torch.Tensor
    """Size of the support (int64)."""
    entropy_B: torch.Tensor
    """Entropy (nats) of the tempered full distribution (float32)."""
    emitted_B: torch.Tensor
    """The token the text shows (int64), after cold-stop / budget forcing."""
    logprob_B: torch.Tensor
    """Rollout log-probability of the step's action (float64); NaN for a forced token."""
    end_code_B: torch.Tensor
    """0: thinking goes on; else an index into ``records.END_REASONS`` (int64)."""
    low_entropy_streak_B: torch.Tensor
    """The cold-stop streak after this step (int64)."""
    next_inputs_BH: torch.Tensor
    """The input embedding of the emitted token's position (float32); meaningful only for
    rows whose thinking goes on."""
    noise_scale_B: torch.Tensor
    """Standard deviation of the Gaussian noise on the concept (float64); 0 for other rows."""
    seed_B: torch.Tensor
    """The request's soft-step seed (int64 holding 64 bits)."""
    gate_retention_B: torch.Tensor
    """Mode 'gate': the mean over dimensions of the gate's a (the token embedding's share);
    NaN for other rows (float64)."""
    latent_BH: torch.Tensor | None = None
    """Mode 'hidden': the latent fed back as the next input, in the model's dtype; NaN for
    rows without one. None when no row is in mode 'hidden'."""

    def packed(self) -> torch.Tensor:
        """Everything the host needs, as one float64 (B, 4K + L + 10) tensor, for one
        transfer: ids and draws (exact in float64), weights, log-weights, the L = H latent
        values if some row is in mode 'hidden' (else L = 0), then
        ``records.PACKED_COLUMNS`` (read back by ``records.unpack_rows``)."""
        seed_low, seed_high = self.seed_B & 0xFFFFFFFF, (self.seed_B >> 32) & 0xFFFFFFFF  # exact in float64
        latent_size = torch.full_like(self.kept_B, 0 if self.latent_BH is None else self.latent_BH.shape[-1])
        columns = (
            self.kept_B, self.entropy_B, self.emitted_B, self.logprob_B, self.noise_scale_B, seed_low, seed_high,
            self.gate_retention_B, latent_size, self.end_code_B,
        )
        blocks = (self.token_ids_BK.double(), self.weights_BK, self.log_weights_BK, self.draws_BK.double())
        if self.latent_BH is not None:
            blocks += (self.latent_BH.double(),)
        return torch.cat((*blocks, torch.stack([c.double() for c in columns], dim=-1)), dim=-1)


COMPILED_NOISE_KINDS = frozenset({"none", "gumbel"})
"""Noise kinds the compiled step evaluates for every row. A batch with Dirichlet rows runs
its per-row tail eagerly: Dirichlet's gamma draws (24 uniforms per slot) would otherwise
cost every step of every batch about 0.5 ms on a 2-core CPU. Batches with multiplex or
Gaussian rows run it eagerly too (their draws' shapes depend on the number of draws or the
hidden size)."""


def decide(
    dist: soft_math.FilteredDistribution,
    floats: torch.Tensor,
    ints: torch.Tensor,
    soft_steps_done_B: torch.Tensor,
    low_entropy_streak_B: torch.Tensor,
    noise_kinds: frozenset[str],
    any_sample: bool,
    max_multiplex: int = 0,
    hidden_size: int = 0,
) -> tuple[torch.Tensor | None, ...]:
    """Noise or multiplex draws, emission, thinking's end and the rollout log-probability of
    every row, from its filtered distribution: (weights_BK, log_weights_BK, draws_BK,
    kept_B, emitted_B, logprob_B, end_code_B, low_entropy_streak_B, concept_noise_BH), the
    last the Gaussian noise to add to the concept embeddings (None when no row has it;
    ``hidden_size`` is needed then). ``noise_kinds``, ``any_sample`` and ``max_multiplex``
    say which branches to evaluate; a branch no row
    takes may be evaluated anyway (its result is selected away, and every draw depends only
    on (seed, step, lane)), which is how the compiled step runs every batch with one graph."""
    base_BK = dist.weights_BK.double()
    log_base_BK = base_BK.log()  # -inf off the support
    seed_B, step_B = ints[:, SEED], soft_steps_done_B
    noise_B, slots = ints[:, NOISE], base_BK.shape[-1]
    multiplex_B, replacement_B = ints[:, MULTIPLEX], ints[:, MULTIPLEX_REPLACEMENT] == 1

    # Every draw of the step in one Philox evaluation, each kind in its own lane.
    lanes = []
    if "gumbel" in noise_kinds:
        lanes.append((stateless_random.GUMBEL, slots))
    if "dirichlet" in noise_kinds:
        lanes += stateless_random.gamma_lanes(slots)
    if any_sample:
        lanes.append((stateless_random.EMIT, 1))
    if max_multiplex:
        lanes += [(stateless_random.MULTIPLEX, max_multiplex), (stateless_random.MULTIPLEX_KEYS, slots)]
    if "gaussian" in noise_kinds:
        lanes.append(stateless_random.gaussian_lane(hidden_size))
    draws = iter(stateless_random.draw(seed_B, step_B, lanes) if lanes else [])

    log_weights_BK = log_base_BK
    if "gumbel" in noise_kinds:
        perturbed = soft_math.gumbel_log_weights(base_BK, floats[:, TAU], stateless_random.gumbel(next(draws)))
        log_weights_BK = torch.where((noise_B == soft_math.NOISE_CODES["gumbel"]).unsqueeze(-1), perturbed, log_weights_BK)
    if "dirichlet" in noise_kinds:
        concentration_BK = torch.where(dist.kept_BK, floats[:, ALPHA].unsqueeze(-1) * base_BK, 1.0)
        log_gamma_BK = stateless_random.log_gammas(concentration_BK, next(draws), next(draws))
        perturbed = soft_math.dirichlet_log_weights(base_BK, log_gamma_BK)
        log_weights_BK = torch.where((noise_B == soft_math.NOISE_CODES["dirichlet"]).unsqueeze(-1), perturbed, log_weights_BK)
    emit_uniform = next(draws)[:, 0] if any_sample else None
    multiplexed_B = multiplex_B > 0
    draws_BK = torch.zeros_like(dist.token_ids_BK)
    if max_multiplex:
        uniforms, keys = next(draws), stateless_random.gumbel(next(draws))
        drawn_BK, first_B = soft_math.multiplex_draws(base_BK, uniforms, keys, multiplex_B, replacement_B)
        uniform_B = ints[:, MULTIPLEX_WEIGHTS] == soft_math.MIXTURE_CODES["uniform"]
        mixture = soft_math.multiplex_log_weights(base_BK, drawn_BK, replacement_B, uniform_B)
        log_weights_BK = torch.where(multiplexed_B.unsqueeze(-1), mixture, log_weights_BK)
        draws_BK = torch.where(multiplexed_B.unsqueeze(-1), drawn_BK, draws_BK)
    weights_BK = log_weights_BK.exp()
    concept_noise_BH, embedding_density_B = None, None
    if "gaussian" in noise_kinds:
        gaussian_B = (noise_B == soft_math.NOISE_CODES["gaussian"]).unsqueeze(-1)
        normal_BH = stateless_random.normal(next(draws))[:, :hidden_size]
        concept_noise_BH = torch.where(gaussian_B, floats[:, SIGMA].unsqueeze(-1) * normal_BH, 0.0)
        embedding_density_B = soft_math.gaussian_log_density(concept_noise_BH, floats[:, SIGMA])

    # Emission: the argmax of the fed-back weights, or a sample from them; under multiplex
    # a sample is the first draw.
    sample_B = ints[:, EMIT] == soft_math.EMIT_CODES["sample"]
    slot_B = weights_BK.argmax(-1)
    if any_sample:
        slot_B = torch.where(sample_B, soft_math.sample_slots(weights_BK, emit_uniform), slot_B)
    if max_multiplex:
        slot_B = torch.where(sample_B & multiplexed_B, first_B, slot_B)
    chosen_B = dist.token_ids_BK.gather(-1, slot_B.unsqueeze(-1)).squeeze(-1)

    emitted_B, streak_B, end_code_B = soft_math.thinking_transition(
        chosen_B, dist.entropy_B, low_entropy_streak_B, step_B, ints[:, THINK_END_ID],
        floats[:, ENTROPY_THRESHOLD], ints[:, PATIENCE], ints[:, MAX_SOFT_STEPS],
    )

    emitted_slot_BK = torch.arange(slots, device=slot_B.device).unsqueeze(0) == slot_B.unsqueeze(-1)
    action = soft_math.ActionKnobs(
        noise_B=noise_B, alpha_B=floats[:, ALPHA], tau_B=floats[:, TAU], sample_B=sample_B,
        multiplex_B=multiplex_B, replacement_B=replacement_B,
        token_only_B=ints[:, ACTION] == soft_math.ACTION_CODES["token"], ended_B=end_code_B != 0,
        noise_kinds=noise_kinds, any_multiplex=max_multiplex > 0, embedding_density_B=embedding_density_B,
    )
    logprob_B = soft_math.step_logprob(log_base_BK, log_weights_BK, dist.kept_BK, emitted_slot_BK, draws_BK, action)
    # A token forced by cold stop or the budget was no action of the policy: no log-probability.
    logprob_B = torch.where(emitted_B == chosen_B, logprob_B, float("nan"))
    kept_B = dist.kept_BK.sum(-1)
    return weights_BK, log_weights_BK, draws_BK, kept_B, emitted_B, logprob_B, end_code_B, streak_B, concept_noise_BH


def _decide_with_statistics(
    logits_BV, maxima_BN, max_B, total_B, entropy_B, floats, ints, steps_B, streak_B, slots_K,
    noise_kinds=COMPILED_NOISE_KINDS, any_sample=True, max_multiplex=0, hidden_size=0,
):
    """Filtering from the vocabulary statistics, then ``decide``: the tail of the step, by
    default with every compiled branch on (``slots_K``: an empty tensor whose length is the
    largest top-k, so that it is a dynamic size rather than a constant that recompiles)."""
    dist = soft_math.filter_with_statistics(
        logits_BV, (maxima_BN, max_B, total_B, entropy_B), floats[:, TEMPERATURE], ints[:, TOP_K],
        floats[:, TOP_P], floats[:, MIN_P], slots_K.shape[0],
    )
    return (dist.token_ids_BK, dist.entropy_B) + decide(
        dist, floats, ints, steps_B, streak_B, noise_kinds, any_sample, max_multiplex, hidden_size
    )


class CompiledSoftStep:
    """The soft step up to its embeddings, compiled once at construction for any number of
    rows and any largest top-k, as two graphs: ``soft_math.vocabulary_statistics`` (the
    whole-vocabulary work in a few fused reads of the logits) and the per-row tail
    (filters, noise, emission, thinking's end, log-probability: about a hundred small
    tensor operations). The tail is one graph with every branch of
    ``COMPILED_NOISE_KINDS`` and sampled emission on, rather than a branch per host flag,
    so no batch composition compiles anything new; batches with Dirichlet rows run it
    eagerly after the compiled statistics.

    Every row gets the values it would get in any batch: a lone row runs as two (the
    compiler splits a single row's sums across threads, which changes their rounding).
    Inputs are brought to the form the graphs were compiled for (contiguous inference
    tensors, float32 logits) so that no call compiles again mid-serving; should one still
    need to (a largest top-k below 3, which the compiler specialises on), that
    call runs the same functions eagerly instead of stalling the engine.
    """

    def __init__(self, vocab_size: int, device: torch.device, top_k: int):
        self._statistics = torch.compile(soft_math.vocabulary_statistics, dynamic=False, fullgraph=True)
        self._tail = torch.compile(_decide_with_statistics, dynamic=False, fullgraph=True)
        self.stance = "default"  # compile now, once
        rows = [(SoftThinkingParams(top_k=max(top_k, 2), noise="none"), 0, 0)] * 2
        self(torch.zeros(2, vocab_size, device=device), StepKnobs.for_requests(rows, device))
        self.stance = "eager_on_recompile"
        """What a call that would need a new graph does (``torch.compiler.set_stance``); tests
        set 'fail_on_recompile' to show that none does."""

    @staticmethod
    def _dynamic(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for tensor in tensors:
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
        return tensors

    def __call__(self, logits_BV: torch.Tensor, knobs: StepKnobs, hidden_size: int = 0) -> tuple[torch.Tensor | None, ...]:
        """``_decide_with_statistics``'s results for the rows of ``logits_BV``."""
        inputs = (logits_BV, knobs.floats_BF, knobs.ints_BI, knobs.soft_steps_done_B, knobs.low_entropy_streak_B)
        rows = logits_BV.shape[0]
        if rows == 1:
            inputs = tuple(tensor.expand(2, *tensor.shape[1:]) for tensor in inputs)
        with torch.inference_mode(), torch.compiler.set_stance(self.stance):
            logits = _compiled_form(inputs[0], torch.float32)
            floats, ints, steps, streak = (_compiled_form(tensor) for tensor in inputs[1:])
            statistics = self._statistics(*self._dynamic(logits, floats[:, TEMPERATURE].float().contiguous()))
            tail_inputs = (logits, *statistics, floats, ints, steps, streak, torch.empty(knobs.max_k, device=logits.device))
            if knobs.noise_kinds <= COMPILED_NOISE_KINDS and not knobs.max_multiplex:
                outputs = self._tail(*self._dynamic(*tail_inputs))
            else:
                outputs = _decide_with_statistics(
                    *tail_inputs, knobs.noise_kinds, knobs.any_sample, knobs.max_multiplex, hidden_size
                )
        return tuple(None if value is None else value[:rows] for value in outputs) if rows == 1 else outputs


def _compiled_form(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` as a contiguous inference tensor of ``dtype`` (default: its own), itself
    when it is one already."""
    dtype = dtype or tensor.dtype
    if tensor.dtype == dtype and tensor.is_contiguous() and torch.is_inference(tensor):
        return tensor
    return tensor.to(dtype, memory_format=torch.contiguous_format, copy=True)


def soft_step(
    logits_BV: torch.Tensor,
    knobs: StepKnobs,
    embed: Callable[[torch.Tensor], torch.Tensor],
    workspace: torch.Tensor | None = None,
    compiled: CompiledSoftStep | None = None,
    hidden_size: int = 0,
    gate: soft_math.GateTensors | None = None,
    hidden_BH: torch.Tensor | None = None,
    latent_norm: float = 0.0,
) -> SoftStepOutput:
    """Filter, perturb, emit, decide thinking's end and build the next inputs, for all rows.

    ``logits_BV``: processed logits of the soft rows (before temperature); ``embed`` maps
    token ids to input embeddings (the model's own embedding, so tensor-parallel shards
    and untied heads are handled by the model). ``compiled`` (the engine's, on CPU) runs
    everything but the embeddings compiled; otherwise eager kernels, with ``workspace``
    serving the vocabulary pass. ``hidden_size``: the embeddings' size, needed by rows with
    Gaussian noise (drawn before the embeddings are looked up). ``gate``: the model's HRPO
    gate, needed by rows in mode 'gate'. ``hidden_BH``: the rows' final-normed last hidden
    states (the ones their logits came from), needed by rows in mode 'hidden';
    ``latent_norm``: the embedding table's RMS row norm, what rows with ``rescale_latent``
    rescale them to.
    """
    floats, ints = knobs.floats_BF, knobs.ints_BI
    if "gaussian" in knobs.noise_kinds and hidden_size <= 0:
        raise ValueError("soft_step: rows with Gaussian noise need hidden_size (the embeddings' size)")
    if knobs.any_gate and gate is None:
        raise ValueError("soft_step: rows in mode 'gate' need the model's gate (vllm_soft.gate)")
    if knobs.any_hidden and hidden_BH is None:
        raise ValueError("soft_step: rows in mode 'hidden' need their hidden states")
    if knobs.any_rescale_latent and latent_norm <= 0:
        raise ValueError("soft_step: rows with rescale_latent need latent_norm (the embeddings' RMS row norm)")
    if compiled is not None:
        token_ids_BK, entropy_B, *decided = compiled(logits_BV, knobs, hidden_size)
    else:
        dist = soft_math.filter_distribution(
            logits_BV, floats[:, TEMPERATURE], ints[:, TOP_K], floats[:, TOP_P], floats[:, MIN_P], workspace, knobs.max_k
        )
        token_ids_BK, entropy_B = dist.token_ids_BK, dist.entropy_B
        decided = decide(
            dist, floats, ints, knobs.soft_steps_done_B, knobs.low_entropy_streak_B, knobs.noise_kinds, knobs.any_sample,
            knobs.max_multiplex, hidden_size,
        )
    weights_BK, log_weights_BK, draws_BK, kept_B, emitted_B, logprob_B, end_code_B, streak_B, concept_noise_BH = decided

    rows, slots = token_ids_BK.shape
    needs_token = knobs.any_add or knobs.any_gate
    ids = torch.cat((token_ids_BK.reshape(-1), emitted_B)) if needs_token else token_ids_BK.reshape(-1)
    embeds = embed(ids)
    support_embeds_BKH = embeds[: rows * slots].reshape(rows, slots, -1)
    concept_BH = soft_math.weighted_embeddings(weights_BK, support_embeds_BKH)
    if concept_noise_BH is not None:
        concept_BH = concept_BH + concept_noise_BH.float()
    next_inputs_BH = concept_BH
    if knobs.any_add:
        add_B = ints[:, MODE] == soft_math.MODE_CODES["add"]
        next_inputs_BH = soft_math.mix_inputs(add_B, embeds[rows * slots :], concept_BH, floats[:, SCALE])
    retention_B = torch.full((rows,), float("nan"), dtype=torch.float64, device=token_ids_BK.device)
    if knobs.any_gate:
        gate_B = ints[:, MODE] == soft_math.MODE_CODES["gate"]
        normalized_BH = soft_math.normalized_concept(weights_BK, support_embeds_BKH)
        gated_BH, a_BH = soft_math.gated_inputs(embeds[rows * slots :], normalized_BH, gate)
        next_inputs_BH = torch.where(gate_B.unsqueeze(-1), gated_BH.float(), next_inputs_BH)
        retention_B = torch.where(gate_B, a_BH.double().mean(-1), retention_B)
    latent_BH = None
    if knobs.any_hidden:  # by count alone: the filtered distribution only names the placeholder
        hidden_rows_B = ints[:, MODE] == soft_math.MODE_CODES["hidden"]
        latent_B, latent_emitted_B, latent_end_B = soft_math.latent_transition(
            token_ids_BK[:, 0], knobs.soft_steps_done_B, ints[:, MAX_SOFT_STEPS], ints[:, THINK_END_ID],
            ints[:, LATENT_TOKEN_ID],
        )
        emitted_B = torch.where(hidden_rows_B, latent_emitted_B, emitted_B)
        end_code_B = torch.where(hidden_rows_B, latent_end_B, end_code_B)
        logprob_B = torch.where(hidden_rows_B, float("nan"), logprob_B)
        target_norm_B = torch.where(ints[:, RESCALE_LATENT] == 1, latent_norm, 0.0)
        # As the model receives it: in its own dtype (what the trace records, exactly).
        fed_BH = soft_math.rescaled_latents(hidden_BH, target_norm_B).to(hidden_BH.dtype).float()
        fed_B = hidden_rows_B & latent_B
        next_inputs_BH = torch.where(fed_B.unsqueeze(-1), fed_BH, next_inputs_BH)
        latent_BH = torch.where(fed_B.unsqueeze(-1), fed_BH, float("nan"))

    return SoftStepOutput(
        token_ids_BK=token_ids_BK,
        weights_BK=weights_BK,
        log_weights_BK=log_weights_BK,
        draws_BK=draws_BK,
        kept_B=kept_B,
        entropy_B=entropy_B,
        emitted_B=emitted_B,
        logprob_B=logprob_B,
        end_code_B=end_code_B,
        low_entropy_streak_B=streak_B,
        next_inputs_BH=next_inputs_BH,
        noise_scale_B=torch.where(ints[:, NOISE] == soft_math.NOISE_CODES["gaussian"], floats[:, SIGMA], 0.0),
        seed_B=ints[:, SEED],
        gate_retention_B=retention_B,
        latent_BH=latent_BH,
    )
