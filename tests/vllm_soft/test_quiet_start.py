"""An engine start says what it chose and nothing false: the default model started in
bf16 (what vLLM's ``auto`` picks on a CPU with bf16 units) loads every tensor as stored, so
vLLM logs no per-tensor dtype warning, and a soft-thinking engine prints its runner line
through vLLM's logging. In a process of its own, as users start it, reading what it printed."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

START = """
from vllm import LLM, SamplingParams
llm = LLM(model={model!r}, dtype="bfloat16", enforce_eager=True, max_model_len=256, kv_cache_memory_bytes=1 << 28,
          additional_config={{"soft_thinking": {{}}}})
print(llm.generate(["What is 2 + 3?"], SamplingParams(max_tokens=2, extra_args={{"soft_thinking": {{}}}}))[0].outputs[0].text)
"""


def test_the_default_model_starts_in_bf16_without_dtype_warnings_and_logs_the_runner_line(default_model_path):
    run = subprocess.run([sys.executable, "-c", START.format(model=str(default_model_path))], capture_output=True,
                         text=True, timeout=600)
    printed = run.stdout + run.stderr
    assert run.returncode == 0, printed[-4000:]
    assert "Attempted to load weight" not in printed
    assert "vllm-soft: soft thinking on: using vLLM's V1 model runner" in printed
    assert "INFO" in next(line for line in printed.splitlines() if "soft thinking on" in line), "at INFO, vLLM's format"
