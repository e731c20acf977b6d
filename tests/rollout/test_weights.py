"""The weight file a push travels in: every dtype and shape comes back bit for bit."""

import logging
import os

import pytest
import torch

from rollout.weights import read_weights_file, write_weights_file


def test_weights_file_round_trip_is_exact():
    torch.manual_seed(0)
    pairs = [
        ("a.weight", torch.randn(3, 5, dtype=torch.bfloat16)),
        ("b.bias", torch.randn(7)),
        ("c.scalar", torch.tensor(2.5, dtype=torch.float64)),
        ("d.empty", torch.zeros(0, 4, dtype=torch.float16)),
        ("e.transposed", torch.randn(4, 6).t()),  # not contiguous
    ]
    path, layout = write_weights_file(pairs)
    try:
        assert all(offset % 64 == 0 for *_, offset in layout)
        loaded = read_weights_file(path, layout)
    finally:
        os.remove(path)
    assert [name for name, _ in loaded] == [name for name, _ in pairs]
    for (_, expected), (_, got) in zip(pairs, loaded):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected)


def test_checksum_is_chunked_and_exact():
    from rollout.weights import CHECKSUM_CHUNK, parameter_checksum

    big = torch.linspace(-1, 1, 3 * CHECKSUM_CHUNK + 17, dtype=torch.float32)
    count, total, squares = parameter_checksum([big, torch.ones(2, 3, dtype=torch.bfloat16)])
    assert count == big.numel() + 6
    assert total == pytest.approx(float(big.double().sum()) + 6, rel=1e-12, abs=1e-9)
    assert squares == pytest.approx(float(big.double().square().sum()) + 6, rel=1e-12)


def test_rank_checksums_add_shards_and_count_replicas_once():
    from rollout.weights import combine_rank_checksums, parameter_checksum

    weight, norm = torch.randn(8, 4), torch.randn(4)
    whole = parameter_checksum([weight, norm])
    ranks = [(parameter_checksum([shard]), parameter_checksum([norm])) for shard in weight.chunk(2)]
    combined = combine_rank_checksums(ranks)
    assert combined[0] == whole[0]
    assert combined[1:] == pytest.approx(whole[1:], rel=1e-12)
    with pytest.raises(ValueError, match="replicated weights differ"):
        combine_rank_checksums([ranks[0], (ranks[1][0], parameter_checksum([norm + 1]))])


def test_derived_layers_are_those_with_only_non_persistent_buffers():
    from rollout.weights import RELOAD_FAILURE_MESSAGE, DerivedLayerReloadFilter, derived_layer_classes

    class Cache(torch.nn.Module):
        def __init__(self, persistent: bool):
            super().__init__()
            self.register_buffer("table", torch.ones(3), persistent=persistent)

    class Scaled(torch.nn.Module):  # holds a persistent buffer: a checkpoint may carry it
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.ones(()))

    model = torch.nn.ModuleDict({"cache": Cache(persistent=False), "linear": torch.nn.Linear(2, 2),
                                 "scaled": Scaled(), "act": torch.nn.ReLU()})
    assert derived_layer_classes(model) == {"Cache"}
    # One instance that a checkpoint could fill makes the whole class loadable.
    model["other_cache"] = Cache(persistent=True)
    assert derived_layer_classes(model) == set()

    quiet = DerivedLayerReloadFilter({"RotaryEmbedding"})

    def record(layer):
        return logging.LogRecord("vllm", logging.WARNING, __file__, 1, RELOAD_FAILURE_MESSAGE, (layer,), None)

    assert not quiet.filter(record("RotaryEmbedding"))
    assert quiet.filter(record("QKVParallelLinear")), "a layer with parameters that failed to load still warns"
