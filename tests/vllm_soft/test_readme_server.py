"""The README's server commands, run exactly as written from the repository root: the
server starts on a fresh machine with no extra flags and the curl call gets a soft trace."""

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PORT = 8000  # the README's commands use vLLM's default port


def readme_server_commands() -> tuple[str, str]:
    """(the serve command, the curl command) of the README's server block."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    block = next(b for b in blocks if "vllm-soft serve smollm2-135m" in b)
    serve, curl = block.split("\ncurl ", 1)
    return serve.strip(), "curl " + curl.strip()


def _port_open() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", PORT)) == 0


def test_the_readmes_server_command_answers_as_written():
    serve, curl = readme_server_commands()
    assert not _port_open(), f"port {PORT} is taken; the README's command needs it"
    log = REPO / ".cache" / "readme_server.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "w") as out:
        server = subprocess.Popen(["bash", "-c", f"exec {serve}"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        while True:
            assert server.poll() is None, f"the README's server exited during start-up; see {log}"
            assert time.monotonic() < deadline, f"the README's server did not come up; see {log}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v1/models", timeout=5) as response:
                    served = [model["id"] for model in json.load(response)["data"]]
                break
            except OSError:
                time.sleep(3)
        assert served[0] == "smollm2-135m", "served under the name typed"
        answer = subprocess.run(["bash", "-c", curl], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert answer.returncode == 0, answer.stderr
        choice = json.loads(answer.stdout)["choices"][0]
        assert choice["soft_thinking"]["num_soft_steps"] > 0 and choice["soft_thinking"]["steps"]
        printed = log.read_text()
        assert "[vllm-soft] serve: serving" in printed and "[vllm-soft] serve: KV cache" in printed
    finally:
        server.terminate()
        server.wait(timeout=60)
