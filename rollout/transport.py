"""How a weight push travels from the learner to every vLLM process of every engine.

    learner (driver) ── publish(named_tensors) ──► handle ──► each RolloutWorker actor
    RolloutWorker ───── receive(handle) ─────────► staged next to the engine (engine busy)
                  ───── load(llm, staged) ───────► every vLLM worker of its engine loads it
                                                   (engine locked: no generate meanwhile)

A transport is those three functions. ``object_store`` is the one this machine
kind needs; a GPU transport (e.g. vLLM's NCCL weight-transfer engine, learner ranks
broadcasting straight into the engines) is one more class in ``TRANSPORTS``, chosen with
``pool.weight_transport``. The pool keeps the last handle and delivers it to a worker
that replaces a dead one, so a handle must stay valid until the next push.
"""

import os
from typing import Protocol


class WeightTransport(Protocol):
    def publish(self, named_tensors) -> object:
        """A handle the pool sends to every rollout worker; ``named_tensors``: a list of
        (Hugging Face name, tensor), or what a previous ``publish`` step already made."""

    def receive(self, handle) -> object:
        """In the rollout actor, while its engine may still generate: bring the weights next
        to the engine; returns what ``load`` takes."""

    def load(self, llm, staged) -> None:
        """With the engine locked: load ``staged`` into every worker process of ``llm`` (in
        place), then release what ``receive`` staged."""


class ObjectStoreTransport:
    """Ray's object store to each rollout worker (one copy per node), then one file in
    shared memory (``rollout.weights.write_weights_file``) that the engine's processes
    map: vLLM's RPC would serialise every byte (about 2-4 s for 270 MB)."""

    def publish(self, named_tensors) -> object:
        """An ObjectRef of the list, or a list of ObjectRefs of lists (the learner's buckets)."""
        import ray

        if isinstance(named_tensors, ray.ObjectRef):
            return named_tensors
        if named_tensors and all(isinstance(item, ray.ObjectRef) for item in named_tensors):
            return list(named_tensors)
        return ray.put(list(named_tensors))

    def receive(self, handle) -> tuple[str, list]:
        """The weights as one shared-memory file: (path, layout)."""
        from rollout.weights import write_weights_file

        # Ray resolves an ObjectRef argument before the actor method runs; buckets arrive as refs.
        if handle and not isinstance(handle[0], tuple):
            import ray

            handle = [pair for bucket in ray.get(list(handle)) for pair in bucket]
        return write_weights_file(handle)

    def load(self, llm, staged: tuple[str, list]) -> None:
        path, layout = staged
        try:
            llm.collective_rpc("load_weights_file", args=(path, layout))
        finally:
            os.remove(path)


TRANSPORTS: dict[str, type] = {"object_store": ObjectStoreTransport}
"""``pool.weight_transport`` name -> transport class."""
