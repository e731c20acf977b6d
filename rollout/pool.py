"""A pool of R rollout workers (Ray actors) that turns prompt groups into sample groups.

    generate(groups) ─► chunks of ``groups_per_call`` groups, queued
         │   every live worker keeps chunks in flight until they hold the engine's
         │   max_num_seqs sequences, and at least two (the actor runs them at once, so
         │   its engine batch stays full and never drains between chunks)
         ◄── a chunk comes back: its groups are done (each exactly once)
         ◄── a worker died: its unfinished chunks go back to the queue, and a
             replacement starts (it loads the current weights before any work)
    returns the groups complete, in the order they were given

Weights: ``update_weights(named_tensors, version)`` puts them in the object store once
and every worker loads them in place; the pool keeps the latest for replacements.
"""

import collections
import logging
import os
import time
import uuid

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from tqdm import tqdm

from rollout.sample import Sample
from rollout.settings import EngineConfig, PoolConfig, SamplingConfig
from rollout.transport import TRANSPORTS
from rollout.worker import GroupRequest, RolloutWorker, engine_environment

logger = logging.getLogger(__name__)

ACTOR_NAME_PREFIX = "vllm-soft-rollout-"
MIN_CALLS_IN_FLIGHT = 2
MAX_CALLS_IN_FLIGHT = 64
WORKER_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)


class RolloutPool:
    """R ``RolloutWorker`` actors behind one ``generate``."""

    def __init__(self, engine: EngineConfig, rewards: dict[str, float], pool: PoolConfig):
        if not ray.is_initialized():
            # RAY_ADDRESS's cluster, else a new local one: never the address a killed run left
            # behind in /tmp/ray, whose cluster is gone (ray.init() would wait on it).
            ray.init(address=os.environ.get("RAY_ADDRESS") or "local")
        self.engine, self.rewards, self.config = engine, rewards, pool
        self.transport = TRANSPORTS[pool.weight_transport]()
        self._weights: tuple[object, int] | None = None
        """The last push: (transport handle, version), for workers that start later."""
        self.workers = [self._start_worker(i) for i in range(pool.num_workers)]
        ray.get([w.ready.remote() for w in self.workers])
        self.restarts = 0

    def _start_worker(self, index: int):
        config = self.config
        actor = ray.remote(RolloutWorker).options(
            num_cpus=config.num_cpus_per_worker,
            num_gpus=config.num_gpus_per_worker,
            resources=dict(config.resources_per_worker),
            max_concurrency=MAX_CALLS_IN_FLIGHT + 2,  # generate calls plus weight loads / checks
            runtime_env={"env_vars": engine_environment(index, config.num_cpus_per_worker, self.engine.engine_core_process)},
            name=f"{ACTOR_NAME_PREFIX}{uuid.uuid4().hex[:8]}-{index}",  # findable: ray list actors
        )
        worker = actor.remote(self.engine, self.rewards, config.reward_timeout_s, index, config.weight_transport)
        if self._weights is not None:
            # Wait for it: the actor runs calls concurrently and receives weights outside its
            # lock, so a generate call sent now could run first, on the weights it started with.
            ray.get(worker.load_weights.remote(*self._weights))
        return worker

    @property
    def weight_version(self) -> int:
        return self._weights[1] if self._weights is not None else 0

    def generate(self, groups: list[GroupRequest], sampling: SamplingConfig, progress: bool = True,
                 rewards: dict[str, float] | None = None) -> list[list[Sample]]:
        """G samples for every group, in the order of ``groups``; ``rewards``: the reward
        terms to score them with (default: the pool's), so one pool serves several tasks."""
        size = self.config.groups_per_call
        queue = collections.deque(groups[i : i + size] for i in range(0, len(groups), size))
        in_flight: dict[ray.ObjectRef, tuple[int, list[GroupRequest]]] = {}
        done: dict[int, list[Sample]] = {}
        bar = tqdm(total=len(groups), unit="group", desc="rollout", disable=not progress)
        start = time.perf_counter()
        while queue or in_flight:
            self._fill(queue, in_flight, sampling, rewards)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            index, chunk = in_flight.pop(ready[0])
            try:
                results = ray.get(ready[0])
            except WORKER_LOST as error:
                self._replace_worker(index, error)
                queue.appendleft(chunk)
                for ref in [r for r, (i, _) in in_flight.items() if i == index]:
                    queue.appendleft(in_flight.pop(ref)[1])
                continue
            for group, samples in zip(chunk, results):
                done[group.group_id] = samples
            bar.update(len(chunk))
            samples_done = sum(len(s) for s in done.values())
            bar.set_postfix(samples_per_s=f"{samples_done / (time.perf_counter() - start):.2f}")
        bar.close()
        return [done[g.group_id] for g in groups]

    def _fill(self, queue, in_flight, sampling: SamplingConfig, rewards: dict[str, float] | None) -> None:
        """Give every worker chunks until it has the engine's batch worth of sequences."""
        calls = collections.Counter(index for index, _ in in_flight.values())
        sequences = collections.Counter()
        for index, chunk in in_flight.values():
            sequences[index] += len(chunk) * sampling.group_size
        for index, worker in enumerate(self.workers):
            while queue and calls[index] < MAX_CALLS_IN_FLIGHT and (
                calls[index] < MIN_CALLS_IN_FLIGHT or sequences[index] < self.engine.max_num_seqs
            ):
                chunk = queue.popleft()
                in_flight[worker.generate.remote(chunk, sampling, rewards)] = (index, chunk)
                calls[index] += 1
                sequences[index] += len(chunk) * sampling.group_size

    def _replace_worker(self, index: int, error: Exception) -> None:
        logger.warning("rollout worker %d died (%s); its unfinished groups go to the queue", index, type(error).__name__)
        if self.config.restart_dead_workers:
            self.workers[index] = self._start_worker(index)
            self.restarts += 1
        else:
            raise RuntimeError(f"rollout worker {index} died and restart_dead_workers is off") from error

    def update_weights(self, named_tensors, version: int) -> float:
        """Load weights into every worker through the pool's transport; returns seconds.
        ``named_tensors``: a list of (name, tensor), or what the transport accepts (for
        ``object_store``: its ObjectRef, or a list of ObjectRefs of such lists, buckets).
        A worker that dies meanwhile is replaced; the replacement loads these weights."""
        start = time.perf_counter()
        handle = self.transport.publish(named_tensors)
        self._weights = (handle, version)
        self._on_every_worker(lambda worker: worker.load_weights.remote(handle, version))
        return time.perf_counter() - start

    def weights_checksums(self) -> list[tuple[int, float, float]]:
        return self._on_every_worker(lambda worker: worker.weights_checksum.remote())

    def _on_every_worker(self, call) -> list:
        """``call(worker)`` on every worker; a worker that died is replaced and asked again."""
        pending = [call(worker) for worker in self.workers]
        results = []
        for index, ref in enumerate(pending):
            try:
                results.append(ray.get(ref))
            except WORKER_LOST as error:
                self._replace_worker(index, error)
                results.append(ray.get(call(self.workers[index])))
        return results

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
