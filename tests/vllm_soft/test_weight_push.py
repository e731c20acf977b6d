"""A weight push through ``rollout.weights.WeightSync`` into an engine in this process (here,
not in tests/rollout: an in-process engine must start after tests/trainer's learner tests,
see tests/in_process.py)."""

import logging
import os

import torch

from rollout.weights import RELOAD_LOGGER, WeightSync, write_weights_file


def test_a_push_keeps_rotary_caches_and_logs_no_false_failure(inprocess_tiny_engine, tiny_model_path, caplog):
    """vLLM's in-place reload warns "RotaryEmbedding: Failed to load weights" on every push
    (the cos/sin cache is in no checkpoint) and puts the cache back: the push leaves it bit for
    bit and the warning is not shown."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    path, layout = write_weights_file(model.state_dict().items())

    def push(worker):
        def caches():
            return {name: b.clone() for name, b in worker.model_runner.model.named_buffers() if "cos_sin_cache" in name}

        before = caches()
        count = WeightSync.load_weights_file(worker, path, layout)
        return before, caches(), count

    try:
        with caplog.at_level("WARNING", logger=RELOAD_LOGGER):
            before, after, count = inprocess_tiny_engine.collective_rpc(push)[0]
    finally:
        os.remove(path)
    assert count == len(layout)
    assert before and before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert "Failed to load weights" not in caplog.text
    assert not logging.getLogger(RELOAD_LOGGER).filters, "the filter is removed after the push"
