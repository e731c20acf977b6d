"""Weights in and out of a vLLM engine, as methods vLLM mixes into its workers.

Engines are started with ``worker_extension_cls="rollout.weights.WeightSync"``, so
``llm.collective_rpc("load_weights_file", args=write_weights_file(pairs))`` runs on every
worker: the tensors travel as one file in shared memory and a layout of plain values
(vLLM's msgpack RPC would copy every byte, and does not rebuild tensors it has no type for).
Names are Hugging Face parameter names; vLLM's own loader maps them onto its fused layers
(qkv, gate_up), so a learner can send its ``state_dict`` as is (a learner sending buckets
joins them first: one reload per push).

``weights_checksum`` is the same function on both sides (``parameter_checksum``): per
parameter value sums in float64, each tensor once. Fused layers keep the multiset of
values, tied embeddings count once, so engine and learner agree exactly when their
weights do. vLLM's CPU backend packs linear weights into oneDNN handles and empties the
parameter; ``engine_weights`` reads such a layer back by running it on the identity
(exact: every output is one product by 1), so the checksum covers the weights the
engine computes with.
"""

import math
import os
import tempfile
from collections.abc import Iterable

import torch

from vllm_soft.runtime import release_freed_memory

SHARED_MEMORY = "/dev/shm"
ALIGN = 64


def parameter_checksum(parameters: Iterable[torch.Tensor]) -> tuple[int, float, float]:
    """(number of values, sum, sum of squares) in float64; callers pass each tensor once."""
    count, total, squares = 0, 0.0, 0.0
    for tensor in parameters:
        values = tensor.detach().double()
        count += values.numel()
        total += float(values.sum())
        squares += float((values * values).sum())
    return count, total, squares


def write_weights_file(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, list]:
    """Write the tensors' bytes into one file, in shared memory (``/dev/shm``) when the node
    has room; returns its path and layout ``[name, dtype, shape, offset]`` per tensor.

    The engine's workers live on this node, so a push crosses the process boundary as a
    file name: vLLM's RPC would otherwise serialise every byte (about 2-4 s for 270 MB)."""
    named_tensors = [(name, t.detach().cpu().contiguous()) for name, t in named_tensors]
    layout, offset = [], 0
    for name, tensor in named_tensors:
        layout.append([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), offset])
        offset += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
    folder = SHARED_MEMORY if _free_bytes(SHARED_MEMORY) > 2 * offset else tempfile.gettempdir()
    handle, path = tempfile.mkstemp(prefix="vllm-soft-weights-", dir=folder)
    with os.fdopen(handle, "wb") as file:
        for (_, tensor), (_, _, _, start) in zip(named_tensors, layout):
            file.seek(start)
            file.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
        file.truncate(offset)
    return path, layout


def read_weights_file(path: str, layout: list) -> list[tuple[str, torch.Tensor]]:
    """Inverse of ``write_weights_file``: tensors viewing a private mapping of the file."""
    size = os.path.getsize(path)
    data = torch.from_file(path, shared=False, size=size, dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
    named_tensors = []
    for name, dtype, shape, offset in layout:
        dtype = getattr(torch, dtype)
        count = math.prod(shape) * dtype.itemsize
        named_tensors.append((name, data[offset : offset + count].view(dtype).reshape(shape)))
    return named_tensors


def _free_bytes(folder: str) -> int:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def engine_weights(model: torch.nn.Module) -> Iterable[torch.Tensor]:
    """Every weight of a vLLM model as it is used, packed CPU linear layers included."""
    seen = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if name == "weight" and parameter.numel() == 0 and hasattr(module, "cpu_linear"):
                identity = torch.eye(module.input_size_per_partition, dtype=parameter.dtype)
                yield module.cpu_linear(identity, parameter, None)  # W transposed
            else:
                yield parameter


class WeightSync:
    """Mixed into vLLM's worker class (``self`` is the worker)."""

    def load_weights_file(self, path: str, layout: list) -> int:
        """Load ``write_weights_file`` output (Hugging Face names) into the model in place;
        returns how many tensors. Goes through vLLM's in-place reload, which re-runs the
        post-loading processing (e.g. the CPU backend's prepacked GEMM weights)."""
        named_tensors = read_weights_file(path, layout)
        self.model_runner.reload_weights(weights_iterator=iter(named_tensors))
        count = len(named_tensors)
        del named_tensors
        release_freed_memory(collect_cycles=False)
        return count

    @torch.no_grad()
    def weights_checksum(self) -> tuple[int, float, float]:
        return parameter_checksum(engine_weights(self.model_runner.model))
