"""The learner's replay of rollouts: log-probs at step 0 equal the engine's (float32) for
every soft action: the token, the noise densities (of the fed-back weights, or of the
concept embedding), the multiplex draws, HRPO's gate, Coconut's latents (which the learner
recomputes)."""

import pytest
from in_process import engine_in_this_process
from soft_actions import SOFT_ACTIONS, replay_gap

from rollout.settings import SamplingConfig
from rollout.worker import GroupRequest
from trainer.policy import ReplayBatch
from vllm_soft.params import SoftThinkingParams

pytestmark = pytest.mark.slow


def _rollout_worker(model_path, **engine_knobs):
    """A rollout worker (no Ray) on the default model in float32, its engine in this process
    (this file runs after test_learner.py; see tests/in_process.py)."""
    from rollout.settings import EngineConfig
    from rollout.worker import RolloutWorker

    with engine_in_this_process():
        return RolloutWorker(EngineConfig(model=str(model_path), dtype="float32", kv_cache_gib=0.5, **engine_knobs),
                             {"correct": 1.0})


def _shutdown(worker) -> None:
    worker.shutdown()
    worker.llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def default_rollout_worker(default_model_path):
    worker = _rollout_worker(default_model_path)
    yield worker
    _shutdown(worker)


@pytest.mark.parametrize("mode", list(SOFT_ACTIONS))
def test_learner_vs_rollout_logprob_gap_at_step_0_is_below_1e_3(mode, default_rollout_worker, default_hf_model, default_tokenizer):
    knobs = SOFT_ACTIONS[mode]
    sampling = SamplingConfig(group_size=4, temperature=1.0, max_tokens=24, seed=7, soft_thinking=knobs)
    prompts = [
        default_tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("What is 2 + 6?", "Write one word that rhymes with cat.")
    ]
    samples = [s for g in default_rollout_worker.generate([GroupRequest(i, p) for i, p in enumerate(prompts)], sampling) for s in g]
    gap, mask = replay_gap(default_hf_model, samples, ReplayBatch.from_samples(samples, temperature=1.0))
    assert int(mask.sum()) == sum(len(s.response_token_ids) for s in samples)
    assert bool((mode == "discrete") == all(not s.soft_steps for s in samples))
    assert any(len(s.response_token_ids) > len(s.soft_steps) for s in samples), "discrete tokens after thinking too"
    if knobs and knobs.get("multiplex"):
        assert all(step["draws"] is not None for s in samples for step in s.soft_steps)
    assert gap <= 1e-3


ENGINE_DEFAULTS = {"mode": "add", "scale": 0.6, "temperature": 0.8}


@pytest.fixture(scope="module")
def rollout_worker_with_engine_defaults(default_model_path):
    worker = _rollout_worker(default_model_path, soft_thinking=ENGINE_DEFAULTS)
    yield worker
    _shutdown(worker)


def test_replay_uses_the_knobs_the_engine_resolved_not_the_requests(
    rollout_worker_with_engine_defaults, default_hf_model, default_tokenizer
):
    """Engine defaults (mode add, scale, soft temperature) that the request does not name
    still shape the rollout; the samples carry the resolved knobs, and the learner's replay
    from them matches the rollout log-probs, where a replay from the request's knobs alone
    (built-in defaults elsewhere, what the learner used to do) does not."""
    request_knobs = {"emit": "sample", "noise": "none", "max_soft_steps": 12}
    sampling = SamplingConfig(group_size=4, temperature=1.0, max_tokens=24, seed=11, soft_thinking=request_knobs)
    prompt = default_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 5 + 4?"}], tokenize=False, add_generation_prompt=True
    )
    (samples,) = rollout_worker_with_engine_defaults.generate([GroupRequest(0, prompt)], sampling)
    assert all(s.soft_steps for s in samples)
    for sample in samples:
        assert {k: sample.soft_knobs[k] for k in ENGINE_DEFAULTS} == ENGINE_DEFAULTS
        assert (sample.soft_knobs["emit"], sample.soft_knobs["max_soft_steps"]) == ("sample", 12)
    resolved, _ = replay_gap(default_hf_model, samples, ReplayBatch.from_samples(samples, temperature=1.0))
    assert resolved <= 1e-3
    from_request = ReplayBatch.from_samples(samples, temperature=1.0)
    from_request.knobs = SoftThinkingParams().with_overrides(request_knobs)
    unresolved, _ = replay_gap(default_hf_model, samples, from_request)
    assert unresolved > 1e-2, "the engine defaults were meant to change the rollout"
