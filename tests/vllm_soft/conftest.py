"""The soft-thinking OpenAI server on the tiny model, one per test session: the server
tests and the API fuzzing share it (a server takes ~40 s to start on 2 cores)."""

import sys

import pytest
from openai_server import openai_server


@pytest.fixture(scope="session")
def server(tiny_model_path):
    """`vllm-soft serve tiny --soft-thinking` (every request soft unless it opts out), float32,
    seeded; yields (openai client, served model name, port)."""
    command = [
        sys.executable, "-m", "vllm_soft.cli", "serve", str(tiny_model_path), "--soft-thinking",
        "--enforce-eager", "--dtype", "float32", "--max-model-len", "512", "--seed", "0",
        "--kv-cache-memory-bytes", str(1 << 29),
    ]
    with openai_server(command) as running:
        yield running
