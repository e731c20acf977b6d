"""Weights in and out of a vLLM engine, as methods vLLM mixes into its workers.

Engines are started with ``worker_extension_cls="rollout.weights.WeightSync"``, so
``llm.collective_rpc("load_weights_file", args=write_weights_file(pairs))`` runs on every
worker: the tensors travel as one file in shared memory and a layout of plain values
(vLLM's msgpack RPC would copy every byte, and does not rebuild tensors it has no type for).
Names are Hugging Face parameter names; vLLM's own loader maps them onto its fused layers
(qkv, gate_up), so a learner can send its ``state_dict`` as is (a learner sending buckets
joins them first: one reload per push).

``weights_checksum`` is the same function on both sides (``parameter_checksum``): per
parameter value sums in float64, each tensor once, in chunks (no float64 copy of a whole
tensor). Fused layers keep the multiset of values, tied embeddings count once, so engine
and learner agree exactly when their weights do. vLLM's CPU backend packs linear weights
into oneDNN handles and empties the parameter; ``engine_weight_roles`` reads such a layer back
by running it on the identity (exact: every output is one product by 1), so the checksum
covers the weights the engine computes with.

Under tensor parallelism each worker holds shards. Each worker reports its shards' sums
and its replicated parameters' sums apart (``engine_weight_roles``: what vLLM's parallel
layers split, which rows are vocabulary padding, which key/value heads are copies), and
``combine_rank_checksums`` adds the shards of all ranks to one copy of the replicated
part, so a TP-2 engine has the checksum of the same weights at TP 1.
"""

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator

import torch

from vllm_soft.gate import gate_state_dict
from vllm_soft.runtime import release_freed_memory

SHARED_MEMORY = "/dev/shm"
ALIGN = 64


RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
"""vLLM's in-place reload logs "<layer class>: Failed to load weights" here."""
RELOAD_FAILURE_MESSAGE = "%s: Failed to load weights"

CHECKSUM_CHUNK = 1 << 20
"""Values per float64 chunk: bounds the checksum's extra memory (8 MiB) on any tensor."""

Checksum = tuple[int, float, float]
"""(number of values, sum, sum of squares)."""


def parameter_checksum(parameters: Iterable[torch.Tensor]) -> Checksum:
    """(number of values, sum, sum of squares) in float64; callers pass each tensor once."""
    count, total, squares = 0, 0.0, 0.0
    for tensor in parameters:
        flat = tensor.detach().reshape(-1)
        count += flat.numel()
        for chunk in flat.split(CHECKSUM_CHUNK):
            values = chunk.double()
            total += float(values.sum())
            squares += float(values.square().sum())
    return count, total, squares


def combine_rank_checksums(per_rank: list[tuple[Checksum, Checksum]]) -> Checksum:
    """The model's checksum from each tensor-parallel rank's (sharded, replicated) parts:
    every rank's shards plus one copy of the replicated parameters, which must agree."""
    replicated = per_rank[0][1]
    if any(rank_replicated != replicated for _, rank_replicated in per_rank):
        raise ValueError(f"replicated weights differ between tensor-parallel ranks: {[r for _, r in per_rank]}")
    count, total, squares = replicated
    for (shard_count, shard_total, shard_squares), _ in per_rank:
        count, total, squares = count + shard_count, total + shard_total, squares + shard_squares
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


def derived_layer_classes(model: torch.nn.Module) -> set[str]:
    """Class names of the layers whose every instance holds no parameter and only
    non-persistent buffers: state vLLM computes from the config (a rotary embedding's cos/sin
    cache), which no checkpoint and no push carries."""
    derived, loadable = set(), set()
    for module in model.modules():
        parameters = [name for name, p in module._parameters.items() if p is not None]
        buffers = {name for name, b in module._buffers.items() if b is not None}
        if not parameters and buffers and buffers <= module._non_persistent_buffers_set:
            derived.add(type(module).__name__)
        elif parameters or buffers:
            loadable.add(type(module).__name__)
    return derived - loadable


class DerivedLayerReloadFilter(logging.Filter):
    """Drops vLLM's reload failure warning for the given layer classes only."""

    def __init__(self, layer_classes: set[str]):
        super().__init__()
        self.layer_classes = layer_classes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == RELOAD_FAILURE_MESSAGE and bool(record.args) and record.args[0] in self.layer_classes)


@contextlib.contextmanager
def quiet_reload_of_derived_layers(model: torch.nn.Module) -> Iterator[None]:
    """vLLM's in-place reload counts a rotary embedding's cos/sin cache as loadable, finds no
    tensor for it, puts the cache back as it was and warns "RotaryEmbedding: Failed to load
    weights" on every push. The cache is derived from the config, so the warning is false
    (a test checks the cache is unchanged); a layer that has parameters still warns."""
    logger = logging.getLogger(RELOAD_LOGGER)
    quiet = DerivedLayerReloadFilter(derived_layer_classes(model))
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _free_bytes(folder: str) -> int:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def _packed_cpu_weight(module: torch.nn.Module, parameter: torch.Tensor) -> torch.Tensor:
    """A CPU-packed linear weight read back by running the layer on the identity (W transposed)."""
    identity = torch.eye(module.input_size_per_partition, dtype=parameter.dtype)
    return module.cpu_linear(identity, parameter, None)


def engine_weight_roles(model: torch.nn.Module) -> Iterable[tuple[torch.Tensor, bool]]:
    """(weight as used, sharded?) for every weight of a vLLM model, each once: vocabulary
    padding rows and copies of replicated key/value heads left out; ``sharded`` False for
    parameters every tensor-parallel rank holds whole."""
    from vllm.model_executor.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    seen = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            tensor = parameter
            if name == "weight" and parameter.numel() == 0 and hasattr(module, "cpu_linear"):
                tensor = _packed_cpu_weight(module, parameter).t()  # back to (out, in)
            if isinstance(module, VocabParallelEmbedding):
                # A shard's rows: its original-vocabulary rows, padding, then added-vocabulary rows.
                indices = module.shard_indices
                added_start = indices.num_org_elements_padded
                yield tensor[: indices.num_org_elements], module.tp_size > 1
                yield tensor[added_start : added_start + indices.num_added_elements], module.tp_size > 1
            elif isinstance(module, QKVParallelLinear) and module.num_kv_head_replicas > 1 and name in ("weight", "bias"):
                # Key/value heads are copied on num_kv_head_replicas ranks: count the first copy.
                query_rows = module.num_heads * module.head_size
                yield tensor[:query_rows], True
                if module.tp_rank % module.num_kv_head_replicas == 0:
                    yield tensor[query_rows:], True
            elif isinstance(module, ColumnParallelLinear) or (isinstance(module, RowParallelLinear) and name == "weight"):
                yield tensor, module.tp_size > 1
            else:
                yield tensor, False


TIED_OUTPUT = "lm_head.weight"


def engine_named_tensors(model: torch.nn.Module, named_tensors: list) -> list:
    """The pushed tensors this vLLM model takes. A tied output layer's weight goes to models
    that have an ``lm_head`` module: on CPU its layer keeps a packed copy of the embedding
    for the logits GEMM, refreshed only when a weight named ``lm_head`` reaches it (without
    it the engine samples from the old output layer, and no checksum sees it). Models whose
    logits use the embedding module itself (vLLM's Gemma 2) have no such name and refuse it."""
    if hasattr(model, "lm_head"):
        return named_tensors
    return [(name, tensor) for name, tensor in named_tensors if name != TIED_OUTPUT]


class WeightSync:
    """Mixed into vLLM's worker class (``self`` is the worker)."""

    def load_weights_file(self, path: str, layout: list) -> int:
        """Load ``write_weights_file`` output (Hugging Face names) into the model in place;
        returns how many tensors. Goes through the worker's own ``reload_weights`` (it sets
        vLLM's config context) and so vLLM's in-place reload, which re-runs the
        post-loading processing (e.g. the CPU backend's prepacked GEMM weights)."""
        named_tensors = engine_named_tensors(self.model_runner.model, read_weights_file(path, layout))
        with quiet_reload_of_derived_layers(self.model_runner.model):
            self.reload_weights(weights_iterator=iter(named_tensors))
        count = len(named_tensors)
        del named_tensors
        release_freed_memory(collect_cycles=False)
        return count

    @torch.no_grad()
    def weights_checksum(self) -> tuple[Checksum, Checksum]:
        """This rank's (sharded, replicated) checksums; ``combine_rank_checksums`` joins ranks.
        The HRPO gate, once loaded or pushed, counts with the replicated part (every rank
        holds it whole), as the learner counts it with the model's weights."""
        roles = list(engine_weight_roles(self.model_runner.model))
        soft = getattr(self.model_runner, "vllm_soft", None)
        gate = soft.loaded_gate if soft is not None else None
        gate_tensors = list(gate_state_dict(gate).values()) if gate is not None else []
        sharded = parameter_checksum(tensor for tensor, is_sharded in roles if is_sharded)
        replicated = parameter_checksum([*(tensor for tensor, is_sharded in roles if not is_sharded), *gate_tensors])
        return sharded, replicated
