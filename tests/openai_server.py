"""Start a real OpenAI-compatible server in a subprocess and wait until it answers."""

import contextlib
import os
import socket
import subprocess
import time

import openai


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def openai_server(command: list[str], startup_s: float = 300):
    """Run ``command + [--host 127.0.0.1 --port P]``; yields (client, served model name, port)."""
    port = free_port()
    process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], env=os.environ.copy(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    deadline = time.monotonic() + startup_s
    try:
        while True:
            assert process.poll() is None, "the server exited during start-up"
            assert time.monotonic() < deadline, f"the server did not come up in {startup_s:.0f} s"
            try:
                model = client.models.list().data[0].id
                break
            except openai.APIConnectionError:
                time.sleep(2)
        yield client, model, port
    finally:
        process.terminate()
        process.wait(timeout=60)
