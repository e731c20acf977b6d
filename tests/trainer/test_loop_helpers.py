"""The training loop's helpers, without Ray or an engine: per-step sampling, sharding over
learner ranks, weight checksums, step metrics, resuming."""

import json

import pytest

from rollout.sample import Sample
from trainer.loop import (
    _checksums_match,
    _mean_soft_entropy,
    _truncate_metrics,
    micro_batches,
    training_sampling,
    shards,
)
from trainer.settings import AlgorithmConfig, TrainConfig


def _config(mode: str) -> TrainConfig:
    return TrainConfig(seed=3, algorithm=AlgorithmConfig(mode=mode, group_size=4, max_tokens=32))


def test_training_samples_with_the_runs_seed_and_knobs():
    config = _config("add")
    sampling = training_sampling(config)
    assert (sampling.seed, sampling.group_size, sampling.max_tokens) == (3, 4, 32)
    assert sampling.soft_thinking == {"noise": "none", **config.algorithm.soft_thinking, "mode": "add"}
    assert training_sampling(_config("discrete")).soft_thinking is None


def test_no_two_samples_of_a_run_share_a_random_stream():
    """Three steps of 8 groups x G = 8 (group ids run on across steps): vLLM seeds each of
    the 192 samples (its own ParentRequest code: sample i gets the request's seed + i) apart."""
    from vllm.v1.engine.parallel_sampling import ParentRequest

    from rollout.worker import sampling_params

    config = TrainConfig(seed=3, algorithm=AlgorithmConfig(mode="replace", group_size=8, prompts_per_step=8))
    sampling = training_sampling(config)
    seeds = []
    for group_id in range(3 * 8):
        parent = ParentRequest(_engine_request(sampling_params(sampling, group_id)))
        seeds += [parent.get_child_info(i)[1].seed for i in range(sampling.group_size)]
    assert len(seeds) == len(set(seeds)) == 192


def _engine_request(params):
    from vllm.v1.engine import EngineCoreRequest

    return EngineCoreRequest(request_id="r", prompt_token_ids=[1], mm_features=None, sampling_params=params,
                             pooling_params=None, arrival_time=0.0, lora_request=None, cache_salt=None,
                             data_parallel_rank=None, external_req_id="r")


@pytest.mark.parametrize("count, ranks", [(8, 1), (8, 3), (3, 4), (0, 2)])
def test_shards_are_contiguous_near_equal_and_cover_every_item(count, ranks):
    items = list(range(count))
    parts = shards(items, ranks)
    assert len(parts) == ranks and sum(parts, []) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_every_rank_runs_enough_micro_batches_for_its_largest_share():
    assert micro_batches(count=10, ranks=3, micro_batch_size=2) == 2  # shares 4, 3, 3
    assert micro_batches(count=0, ranks=2, micro_batch_size=4) == 1
    assert micro_batches(count=64, ranks=1, micro_batch_size=8) == 8


def test_weight_checksums_match_to_summation_order_only():
    learner = (10, 1234.5, 9999.0)
    assert _checksums_match(learner, [(10, 1234.5 * (1 + 5e-10), 9999.0), learner])
    assert not _checksums_match(learner, [(10, 1234.5 * (1 + 1e-6), 9999.0)])
    assert not _checksums_match(learner, [(11, 1234.5, 9999.0)])


def test_mean_soft_entropy_is_over_every_soft_step_of_the_batch():
    def sample(entropies):
        steps = [{"position": i, "token_ids": [1], "weights": [1.0], "log_weights": [0.0], "entropy": e} for i, e in enumerate(entropies)]
        return Sample(0, 0, "p", [1], [2] * max(len(entropies), 1), "x", [0.0] * max(len(entropies), 1), "length",
                      soft_steps=steps)

    assert _mean_soft_entropy([sample([1.0, 2.0]), sample([6.0])]) == pytest.approx(3.0)
    assert _mean_soft_entropy([sample([])]) is None


def test_resuming_drops_the_metrics_of_steps_after_the_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(5)))
    _truncate_metrics(tmp_path, last_step=2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
    _truncate_metrics(tmp_path / "absent", last_step=2)  # a fresh run has no metrics yet
