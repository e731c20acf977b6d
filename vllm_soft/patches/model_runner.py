"""Worker patch: the soft step inside vLLM's V1 model runner and sampler.

Why: vLLM has no hook to read a request's processed logits and feed an arbitrary
embedding back as its next input. What: wraps ``GPUModelRunner`` (which the CPU runner
subclasses, so one patch covers both) ``__init__``, ``_update_states``, ``_preprocess``,
``_sample``, ``sample_tokens`` (which also hands mode 'hidden' the step's hidden states), ``_dummy_sampler_run`` and ``reload_weights`` (weights
changed: the Gaussian noise's unit is measured again; a push's ``soft_gate.*`` tensors go
to the HRPO gate), and ``Sampler.sample``; the
logic lives in ``vllm_soft.worker``. Only the V1 runner has the soft step: soft-thinking
engines select it (``patches/engine.py``). When it can go: once vLLM offers per-request
input-embedding and logits hooks in the decode loop; the long-term home is Model Runner
V2 (what a port needs: the same five hooks in ``vllm/v1/worker/gpu/model_runner.py`` —
request registration in its ``RequestState``, input embeddings before the forward, the
processed logits inside its sampler, the sampled-token write-back, and its memory
profile — plus per-request trace output; V2 keeps its inputs in persistent GPU buffers
and samples with Triton kernels, so the soft step would write into those buffers).
"""

import functools

import numpy as np

from vllm_soft.gate import GATE_PREFIX, gate_from_state_dict
from vllm_soft.params import engine_defaults
from vllm_soft.worker import ACTIVE_STEP, BatchView, SoftThinkingRunner


def _soft_runner(runner, defaults) -> SoftThinkingRunner:
    config = runner.model_config
    return SoftThinkingRunner(
        defaults, runner.device, config.get_vocab_size(), config.get_hidden_size(), config.dtype, config.seed,
        runner.max_num_reqs, model_path=config.model,
    )


def _batch_view(runner) -> BatchView:
    """This step's batch as the soft step reads it (views of vLLM's host arrays)."""
    batch = runner.input_batch
    rows = batch.num_reqs
    return BatchView(
        req_ids=batch.req_ids[:rows],
        query_starts=runner.query_start_loc.np[: rows + 1],
        num_computed=batch.num_computed_tokens_cpu[:rows].astype(np.int64),
        discarded=runner.discard_request_mask.np[:rows],
    )


def sampler_bypass(sampler_module, on_gfx1250=None) -> str | None:
    """Why vLLM's sampler may sample a batch without calling ``Sampler.sample`` (where the
    soft step runs), or None. vLLM 0.33's ``Sampler.forward`` returns early through a fused
    kernel on ROCm gfx1250 with aiter on (``mixed_sample_eligible``); no CUDA or CPU build
    has such a path. ``on_gfx1250``: vLLM's ROCm check (imported only on that path: the ROCm
    platform module does not load elsewhere)."""
    if not hasattr(sampler_module, "mixed_sample_eligible") or not sampler_module.rocm_aiter_ops.is_enabled():
        return None
    if on_gfx1250 is None:
        from vllm.platforms.rocm import on_gfx1250
    if not on_gfx1250():
        return None
    return ("soft thinking cannot run beside vLLM's fused aiter sampling on this ROCm GPU (it samples without "
            "the soft step); set VLLM_ROCM_USE_AITER=0")


def _check_supported(runner) -> None:
    """Start-up checks of what the soft step needs from the engine; each names the setting."""
    from vllm.config.compilation import CompilationMode, CUDAGraphMode
    from vllm.v1.sample import sampler

    config = runner.vllm_config
    bypass = sampler_bypass(sampler)
    if bypass is not None:
        raise ValueError(bypass)
    if config.speculative_config is not None:
        raise ValueError("soft thinking does not support speculative decoding; drop --speculative-config")
    if config.parallel_config.pipeline_parallel_size != 1:
        raise ValueError("soft thinking needs pipeline_parallel_size=1")
    if getattr(runner, "use_async_scheduling", False):
        raise ValueError(
            "soft thinking needs synchronous scheduling, but this runner schedules asynchronously; "
            "pass --no-async-scheduling (async_scheduling=False)"
        )
    compilation = config.compilation_config
    compiled = compilation.mode != CompilationMode.NONE or compilation.cudagraph_mode != CUDAGraphMode.NONE
    if compiled and not runner.enable_prompt_embeds:
        raise ValueError(
            "soft thinking feeds embeddings to the model: start vLLM with enforce_eager=True "
            "or enable_prompt_embeds=True (compiled graphs otherwise take token ids only)"
        )


def apply() -> None:
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    init, update_states = GPUModelRunner.__init__, GPUModelRunner._update_states
    preprocess, sample, sample_tokens = GPUModelRunner._preprocess, GPUModelRunner._sample, GPUModelRunner.sample_tokens
    dummy_sampler_run = GPUModelRunner._dummy_sampler_run
    reload_weights = GPUModelRunner.reload_weights
    sampler_sample = Sampler.sample

    @functools.wraps(init)
    def __init__(self, vllm_config, *args, **kwargs):
        init(self, vllm_config, *args, **kwargs)
        defaults = engine_defaults(vllm_config.additional_config)
        self.vllm_soft = None if defaults is None else _soft_runner(self, defaults)
        if self.vllm_soft is not None:
            _check_supported(self)

    @functools.wraps(update_states)
    def _update_states(self, scheduler_output, *args, **kwargs):
        result = update_states(self, scheduler_output, *args, **kwargs)
        soft = self.vllm_soft
        if soft is not None:
            soft.forget(scheduler_output.finished_req_ids)
            for new_request in scheduler_output.scheduled_new_reqs:
                cached = self.requests[new_request.req_id]
                soft.register(new_request.req_id, cached.sampling_params, cached.num_prompt_tokens)
        return result

    @functools.wraps(preprocess)
    def _preprocess(self, *args, **kwargs):
        input_ids, inputs_embeds, *rest = preprocess(self, *args, **kwargs)
        if self.vllm_soft is not None:
            input_ids, inputs_embeds = self.vllm_soft.inject(
                _batch_view(self), input_ids, inputs_embeds, self.model.embed_input_ids
            )
        return (input_ids, inputs_embeds, *rest)

    @functools.wraps(sample)
    def _sample(self, logits, *args, **kwargs):
        plan = self.vllm_soft.plan(_batch_view(self)) if self.vllm_soft is not None else None
        if plan is None:
            return sample(self, logits, *args, **kwargs)
        plan.run = functools.partial(self.vllm_soft.run, plan, embed=self.model.embed_input_ids)
        token = ACTIVE_STEP.set(plan)
        try:
            output = sample(self, logits, *args, **kwargs)
        finally:
            ACTIVE_STEP.reset(token)
        if plan.payload is None:  # never decode a soft row as a plain token silently
            raise RuntimeError(
                f"vLLM sampled {len(plan.rows)} soft-thinking rows without calling Sampler.sample, "
                "so the soft step did not run; this sampling path is not supported with soft thinking"
            )
        self.vllm_soft.current_plan = plan
        return output

    @functools.wraps(sample_tokens)
    def sample_tokens_(self, *args, **kwargs):
        soft = self.vllm_soft
        state = self.execute_model_state
        if soft is not None and soft.requests and state is not None:
            # Mode 'hidden' feeds back the rows' final-normed hidden states; sample_tokens
            # clears the state before it samples, so they are taken here.
            soft.step_hidden = state.sample_hidden_states
        try:
            output = sample_tokens(self, *args, **kwargs)
        finally:
            if soft is not None:
                soft.step_hidden = None
        plan = soft.current_plan if soft is not None else None
        if plan is not None:
            soft.current_plan = None
            assert isinstance(output, ModelRunnerOutput), "soft thinking runs with synchronous scheduling only"
            lengths = [self.requests[req_id].num_tokens for req_id in plan.req_ids]
            output.vllm_soft_trace = soft.commit(plan, output.sampled_token_ids, lengths)
        return output

    @functools.wraps(reload_weights)
    def reload_weights_(self, *args, **kwargs):
        soft = self.vllm_soft
        gate_tensors = {}
        iterator = args[0] if args else kwargs.get("weights_iterator")
        if soft is not None and iterator is not None:
            # A push's "soft_gate.*" tensors are the HRPO gate's, which the model does not hold.
            model_tensors = []
            for name, tensor in iterator:
                if name.startswith(GATE_PREFIX):
                    gate_tensors[name.removeprefix(GATE_PREFIX)] = tensor
                else:
                    model_tensors.append((name, tensor))
            if args:
                args = (iter(model_tensors), *args[1:])
            else:
                kwargs["weights_iterator"] = iter(model_tensors)
        # The gate alone leaves the model's weights (and what was derived from them) as they are.
        result = None
        if not (gate_tensors and not model_tensors):
            result = reload_weights(self, *args, **kwargs)
            if soft is not None:
                soft.weights_changed()
        if gate_tensors:
            soft.set_gate(gate_from_state_dict(gate_tensors, soft.hidden_size))
        return result

    @functools.wraps(dummy_sampler_run)
    def _dummy_sampler_run(self, hidden_states, *args, **kwargs):
        output = dummy_sampler_run(self, hidden_states, *args, **kwargs)
        if self.vllm_soft is not None:
            self.vllm_soft.profile(hidden_states.shape[0], self.model.embed_input_ids)
        return output

    @functools.wraps(sampler_sample)
    def Sampler_sample(self, logits, sampling_metadata, *args, **kwargs):
        plan = ACTIVE_STEP.get()
        if plan is None:
            return sampler_sample(self, logits, sampling_metadata, *args, **kwargs)
        emitted = plan.run(logits)  # before vLLM's sampling, which may scale logits in place
        wants_logprobs = sampling_metadata.max_num_logprobs is not None or getattr(
            sampling_metadata, "logprob_token_ids", None
        )
        if plan.all_rows and not wants_logprobs:
            return emitted, None  # the soft step sampled every row: vLLM's sampling would be discarded
        sampled, processed_logprobs = sampler_sample(self, logits, sampling_metadata, *args, **kwargs)
        sampled[plan.rows_dev] = emitted.to(sampled.dtype)
        return sampled, processed_logprobs

    GPUModelRunner.__init__ = __init__
    GPUModelRunner._update_states = _update_states
    GPUModelRunner._preprocess = _preprocess
    GPUModelRunner._sample = _sample
    GPUModelRunner.sample_tokens = sample_tokens_
    GPUModelRunner._dummy_sampler_run = _dummy_sampler_run
    GPUModelRunner.reload_weights = reload_weights_
    Sampler.sample = Sampler_sample
