"""Weights in and out of a vLLM engine, as methods vLLM mixes into its workers.

Engines are started with ``worker_extension_cls="rollout.weights.WeightSync"``, so
``llm.collective_rpc("load_named_weights", args=(named_tensors,))`` runs on every worker.
Names are Hugging Face parameter names; vLLM's own loader maps them onto its fused layers
(qkv, gate_up), so a learner can send its ``state_dict`` as is (a learner sending buckets
joins them first: one reload per push).

``weights_checksum`` is the same function on both sides (``parameter_checksum``): per
parameter value sums in float64, over unique tensors. Fused layers keep the multiset of
values, tied embeddings count once, so engine and learner agree exactly when their
weights do.
"""

from collections.abc import Iterable

import torch


def parameter_checksum(parameters: Iterable[torch.Tensor]) -> tuple[int, float, float]:
    """(number of values, sum, sum of squares) over unique tensors, in float64."""
    seen, count, total, squares = set(), 0, 0.0, 0.0
    for tensor in parameters:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        values = tensor.detach().double()
        count += values.numel()
        total += float(values.sum())
        squares += float((values * values).sum())
    return count, total, squares


class WeightSync:
    """Mixed into vLLM's worker class (``self`` is the worker)."""

    def load_named_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """Load (Hugging Face name, tensor) pairs into the model in place; returns how many.

        Goes through vLLM's in-place reload, which re-runs the post-loading processing
        (e.g. the CPU backend's prepacked GEMM weights)."""
        self.model_runner.reload_weights(weights_iterator=iter(named_tensors))
        return len(named_tensors)

    def weights_checksum(self) -> tuple[int, float, float]:
        return parameter_checksum(self.model_runner.model.parameters())
