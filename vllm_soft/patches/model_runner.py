"""Worker patches: the soft step inside vLLM's V1 model runner and sampler.

Why: vLLM has no hook to read a request's processed logits and feed an arbitrary
embedding back as its next input. What: wraps ``GPUModelRunner`` (which the CPU runner
subclasses, so one patch covers both) ``__init__``, ``_update_states``, ``_preprocess``,
``_sample`` and ``sample_tokens``, and ``Sampler.sample``; the logic lives in
``vllm_soft.worker``. When it can go: once vLLM offers per-request input-embedding and
logits hooks in the decode loop.

Also ``_bookkeeping_sync``, for a vLLM bug on CPU: when a seeded request's sample is
discarded (a partial prefill chunk), vLLM rewinds its generator with ``set_offset``,
which CPU generators do not have, and the engine dies. Rollouts are seeded and chunked,
so soft-thinking engines snapshot those generators before sampling and restore them
instead. When it can go: once vLLM rewinds CPU generators itself.
"""

import functools

from vllm_soft.params import engine_defaults
from vllm_soft.worker import SoftThinkingRunner


def _check_supported(runner) -> None:
    from vllm.config.compilation import CompilationMode, CUDAGraphMode

    config = runner.vllm_config
    if config.speculative_config is not None:
        raise ValueError("soft thinking does not support speculative decoding; drop --speculative-config")
    if config.parallel_config.pipeline_parallel_size != 1:
        raise ValueError("soft thinking needs pipeline_parallel_size=1")
    if getattr(runner, "use_async_scheduling", False):
        raise ValueError("soft thinking needs synchronous scheduling; pass --no-async-scheduling")
    compilation = config.compilation_config
    compiled = compilation.mode != CompilationMode.NONE or compilation.cudagraph_mode != CUDAGraphMode.NONE
    if compiled and not runner.enable_prompt_embeds:
        raise ValueError(
            "soft thinking feeds embeddings to the model: start vLLM with enforce_eager=True "
            "or enable_prompt_embeds=True (compiled graphs otherwise take token ids only)"
        )


def _snapshot_discarded_cpu_generators(runner) -> dict:
    """Row -> state of each CPU generator whose sample this step will discard."""
    rows = runner.discard_request_mask.np[: runner.input_batch.num_reqs].nonzero()[0]
    generators = runner.input_batch.generators
    return {
        int(row): generators[int(row)].get_state()
        for row in rows
        if int(row) in generators and generators[int(row)].device.type == "cpu"
    }


def apply() -> None:
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    init, update_states = GPUModelRunner.__init__, GPUModelRunner._update_states
    preprocess, sample, sample_tokens = GPUModelRunner._preprocess, GPUModelRunner._sample, GPUModelRunner.sample_tokens
    bookkeeping_sync = GPUModelRunner._bookkeeping_sync
    sampler_sample = Sampler.sample

    @functools.wraps(init)
    def __init__(self, vllm_config, *args, **kwargs):
        init(self, vllm_config, *args, **kwargs)
        defaults = engine_defaults(vllm_config.additional_config)
        self.vllm_soft = None if defaults is None else SoftThinkingRunner(defaults)
        if self.vllm_soft is not None:
            _check_supported(self)

    @functools.wraps(update_states)
    def _update_states(self, scheduler_output, *args, **kwargs):
        result = update_states(self, scheduler_output, *args, **kwargs)
        if self.vllm_soft is not None:
            self.vllm_soft.forget(scheduler_output.finished_req_ids)
        return result

    @functools.wraps(preprocess)
    def _preprocess(self, *args, **kwargs):
        input_ids, inputs_embeds, *rest = preprocess(self, *args, **kwargs)
        if self.vllm_soft is not None:
            input_ids, inputs_embeds = self.vllm_soft.inject(self, input_ids, inputs_embeds)
        return (input_ids, inputs_embeds, *rest)

    @functools.wraps(sample)
    def _sample(self, logits, *args, **kwargs):
        if self.vllm_soft is not None:
            self.vllm_soft_saved_generators = _snapshot_discarded_cpu_generators(self)
        if self.vllm_soft is None or not self.vllm_soft.begin_sampling(self):
            return sample(self, logits, *args, **kwargs)
        self.sampler.vllm_soft = self.vllm_soft
        try:
            return sample(self, logits, *args, **kwargs)
        finally:
            self.sampler.vllm_soft = None

    @functools.wraps(sample_tokens)
    def sample_tokens_(self, *args, **kwargs):
        output = sample_tokens(self, *args, **kwargs)
        if self.vllm_soft is not None and isinstance(output, ModelRunnerOutput):
            entries = self.vllm_soft.commit(self, output.sampled_token_ids)
            if entries:
                output.vllm_soft_trace = entries
        return output

    @functools.wraps(bookkeeping_sync)
    def _bookkeeping_sync(self, *args, **kwargs):
        saved = getattr(self, "vllm_soft_saved_generators", None) or {}
        generators = self.input_batch.generators
        hidden = {row: generators.pop(row) for row in saved}  # vLLM would call set_offset on them
        try:
            return bookkeeping_sync(self, *args, **kwargs)
        finally:
            for row, generator in hidden.items():
                generator.set_state(saved[row])
                generators[row] = generator
            self.vllm_soft_saved_generators = None

    @functools.wraps(sampler_sample)
    def Sampler_sample(self, logits, *args, **kwargs):
        soft = getattr(self, "vllm_soft", None)
        replacements = soft.propose(logits) if soft is not None else []
        sampled, processed_logprobs = sampler_sample(self, logits, *args, **kwargs)
        for row, token_id in replacements:
            sampled[row] = token_id
        return sampled, processed_logprobs

    GPUModelRunner.__init__ = __init__
    GPUModelRunner._update_states = _update_states
    GPUModelRunner._preprocess = _preprocess
    GPUModelRunner._sample = _sample
    GPUModelRunner.sample_tokens = sample_tokens_
    GPUModelRunner._bookkeeping_sync = _bookkeeping_sync
    Sampler.sample = Sampler_sample
