"""A real local Ray cluster and one rollout pool on the tiny model, shared by a module's tests."""

import pytest

from rollout.settings import EngineConfig, PoolConfig


@pytest.fixture(scope="session")
def tiny_engine_config():
    # Engine cores in the workers' processes: each start (and the killed worker's restart)
    # ~25 s sooner; the weight-push test's fresh engine covers vLLM's own process layout.
    return EngineConfig(model="tiny", dtype="float32", max_model_len=512, kv_cache_gib=0.25, max_num_seqs=64,
                        engine_core_process=False)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_pool(ray_cluster, tiny_model_path, tiny_engine_config):
    from rollout.pool import RolloutPool

    pool = RolloutPool(tiny_engine_config, {"correct": 1.0, "format": 0.1}, PoolConfig(num_workers=2, groups_per_call=2))
    yield pool
    pool.shutdown()
