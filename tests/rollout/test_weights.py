"""The weight file a push travels in: every dtype and shape comes back bit for bit."""

import os

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
