"""Weights in and out of a vLLM engine, as methods vLLM mixes into its workers.

Engines are started with ``worker_extension_cls="rollout.weights.WeightSync"``, so
``llm.collective_rpc("load_named_weights", args=(encode_named_tensors(pairs),))`` runs on
every worker. vLLM's RPC serialiser (msgpack) does not rebuild tensors it has no type for,
so tensors travel as (dtype, shape, raw bytes).
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

from collections.abc import Iterable

import torch

from vllm_soft.runtime import release_freed_memory


def parameter_checksum(parameters: Iterable[torch.Tensor]) -> tuple[int, float, float]:
    """(number of values, sum, sum of squares) in float64; callers pass each tensor once."""
    count, total, squares = 0, 0.0, 0.0
    for tensor in parameters:
        values = tensor.detach().double()
        count += values.numel()
        total += float(values.sum())
        squares += float((values * values).sum())
    return count, total, squares


def encode_named_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, str, list[int], bytes]]:
    """(name, dtype, shape, bytes) per tensor: plain data any RPC layer carries."""
    return [
        (name, str(t.dtype).removeprefix("torch."), list(t.shape), t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        for name, t in named_tensors
    ]


def decode_named_tensors(encoded) -> list[tuple[str, torch.Tensor]]:
    """Inverse of ``encode_named_tensors``."""
    return [
        (name, torch.frombuffer(bytearray(data), dtype=torch.uint8).view(getattr(torch, dtype)).reshape(shape))
        for name, dtype, shape, data in encoded
    ]


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

    def load_named_weights(self, encoded: list) -> int:
        """Load ``encode_named_tensors`` output (Hugging Face names) into the model in place;
        returns how many tensors. Goes through vLLM's in-place reload, which re-runs the
        post-loading processing (e.g. the CPU backend's prepacked GEMM weights)."""
        named_tensors = decode_named_tensors(encoded)
        self.model_runner.reload_weights(weights_iterator=iter(named_tensors))
        count = len(named_tensors)
        del named_tensors, encoded
        release_freed_memory()
        return count

    @torch.no_grad()
    def weights_checksum(self) -> tuple[int, float, float]:
        return parameter_checksum(engine_weights(self.model_runner.model))
