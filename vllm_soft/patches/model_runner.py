"""Worker patches: the soft step inside vLLM's V1 model runner and sampler.

Why: vLLM has no hook to read a request's processed logits and feed an arbitrary
embedding back as its next input. What: wraps ``GPUModelRunner`` (which the CPU runner
subclasses, so one patch covers both) ``__init__``, ``_update_states``, ``_preprocess``,
``_sample`` and ``sample_tokens``, and ``Sampler.sample``; the logic lives in
``vllm_soft.worker``. When it can go: once vLLM offers per-request input-embedding and
logits hooks in the decode loop.
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


def apply() -> None:
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    init, update_states = GPUModelRunner.__init__, GPUModelRunner._update_states
    preprocess, sample, sample_tokens = GPUModelRunner._preprocess, GPUModelRunner._sample, GPUModelRunner.sample_tokens
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
    Sampler.sample = Sampler_sample
