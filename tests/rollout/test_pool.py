"""The rollout pool on a real local Ray cluster: 2 workers, tiny model."""

import dataclasses
import math

import pytest
import torch

from rollout.settings import PoolConfig, SamplingConfig
from rollout.worker import GroupRequest

pytestmark = pytest.mark.slow

PROMPTS = 6
G = 4


def groups(count: int, offset: int = 0) -> list[GroupRequest]:
    return [GroupRequest(group_id=offset + i, prompt=f"Question {i}: what is {i} + {i % 3}?", answer=str(i + i % 3))
            for i in range(count)]


@pytest.mark.parametrize("soft_thinking", [None, {"emit": "sample", "noise": "dirichlet"}])
def test_pool_returns_g_samples_per_prompt_grouped_in_order(tiny_pool, soft_thinking):
    sampling = SamplingConfig(group_size=G, max_tokens=12, soft_thinking=soft_thinking)
    requests = groups(PROMPTS)
    result = tiny_pool.generate(requests, sampling, progress=False)
    assert len(result) == PROMPTS and sum(len(g) for g in result) == G * PROMPTS
    for request, group in zip(requests, result):
        assert [s.group_id for s in group] == [request.group_id] * G
        assert [s.sample_index for s in group] == list(range(G))
        for sample in group:
            assert sample.prompt == request.prompt and sample.answer == request.answer
            assert len(sample.rollout_logprobs) == len(sample.response_token_ids) == 12
            assert all(math.isfinite(lp) for lp in sample.rollout_logprobs)
            if soft_thinking is None:  # (a noisy soft step's log-density may be positive)
                assert all(lp <= 0.0 for lp in sample.rollout_logprobs)
            assert set(sample.reward_parts) == {"correct", "format"}
            assert sample.weight_version == tiny_pool.weight_version
            if soft_thinking is None:
                assert sample.soft_steps == []
            else:
                assert [s["position"] for s in sample.soft_steps] == list(range(12))
                assert all(abs(sum(s["weights"]) - 1) < 1e-5 for s in sample.soft_steps)
    if soft_thinking is not None:  # sampled soft emissions differ within a group
        assert any(len({tuple(s.response_token_ids) for s in group}) > 1 for group in result)


def _perturbed(state_dict: dict, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {name: t + 0.02 * torch.randn(t.shape, generator=generator) for name, t in state_dict.items()}


def test_weight_push_same_keeps_outputs_perturbed_equals_fresh_engine(tiny_pool, tiny_engine_config, tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from rollout.pool import RolloutPool

    greedy = SamplingConfig(group_size=1, temperature=0.0, max_tokens=16)
    requests = groups(4, offset=100)

    def tokens(pool):
        return [[s.response_token_ids for s in group] for group in pool.generate(requests, greedy, progress=False)]

    before = tokens(tiny_pool)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tiny_pool.update_weights(list(state.items()), version=1)
    assert tokens(tiny_pool) == before
    assert all(s.weight_version == 1 for g in tiny_pool.generate(requests, greedy, progress=False) for s in g)

    perturbed = _perturbed(state, seed=0)
    tiny_pool.update_weights(list(perturbed.items()), version=2)
    pushed = tokens(tiny_pool)
    assert pushed != before
    model.load_state_dict(perturbed)
    model.save_pretrained(tmp_path / "perturbed")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tiny_model_path / name).exists():
            (tmp_path / "perturbed" / name).write_bytes((tiny_model_path / name).read_bytes())
    # The fresh engine runs its core in a process of its own (the shared pool's run in their
    # workers' processes): the same tokens either way.
    engine = dataclasses.replace(tiny_engine_config, model=str(tmp_path / "perturbed"), engine_core_process=True)
    fresh = RolloutPool(engine, {"correct": 1.0}, PoolConfig(num_workers=1))
    try:
        assert tokens(fresh) == pushed
    finally:
        fresh.shutdown()
    tiny_pool.update_weights(list(state.items()), version=3)  # leave the shared pool as it was


def test_killed_worker_loses_and_duplicates_no_group(tiny_pool, ray_cluster, monkeypatch):
    """A worker killed while it holds finished and unfinished work: 40 groups are more than
    the two engines take at once (8 chunks of 8 sequences each), so when the first chunk
    comes back its worker is given a queued chunk, and that worker is killed then: the
    chunk it was just given is certainly unfinished."""
    sampling = SamplingConfig(group_size=4, max_tokens=64)
    requests = groups(40, offset=200)
    fill, fills = tiny_pool._fill, []

    def fill_then_kill(queue, in_flight, *args):
        before = set(in_flight)
        fill(queue, in_flight, *args)
        fills.append({index for index, _ in in_flight.values()})
        if len(fills) == 2:
            given = [index for ref, (index, _) in in_flight.items() if ref not in before]
            assert given, "a queued chunk went to the worker whose chunk came back"
            ray_cluster.kill(tiny_pool.workers[given[0]])

    monkeypatch.setattr(tiny_pool, "_fill", fill_then_kill)
    returned = tiny_pool.generate(requests, sampling, progress=False)
    assert len(fills) > 2, "the kill happened while groups were left"
    assert [group[0].group_id for group in returned] == [r.group_id for r in requests]
    assert all(len(group) == 4 for group in returned)
    assert tiny_pool.restarts == 1
    # The replacement loaded the pool's current weights before it took any work.
    assert all(s.weight_version == tiny_pool.weight_version for group in returned for s in group)
