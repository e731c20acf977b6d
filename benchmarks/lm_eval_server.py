"""lm-evaluation-harness against ``vllm-soft serve --soft-thinking``: a client nobody here
wrote drives the server through the plain OpenAI chat API.

    .venv/bin/pip install "lm-eval[api]==0.4.13"
    .venv/bin/python benchmarks/lm_eval_server.py [--limit 100] [--model smollm2-135m]

Writes the task's data (1-digit, 2-term arithmetic from reasoning-gym, seeded) to
``benchmarks/lm_eval/arith_1digit.jsonl``, starts one server with soft thinking (every
request soft: lm-eval sends no extra fields), runs ``lm_eval --model
local-chat-completions`` on the task in ``benchmarks/lm_eval/arith_1digit.yaml``, checks
from the server's answers that the requests were soft, then repeats against a plain
server (no ``--soft-thinking``) for comparison. Prints both accuracies.
"""

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "benchmarks" / "lm_eval"
DATA = TASK_DIR / "arith_1digit.jsonl"


def write_data(count: int, seed: int) -> None:
    from rollout.prompts import PromptSourceConfig, load_prompts

    source = PromptSourceConfig(kind="reasoning_gym", name="basic_arithmetic", size=count, seed=seed,
                                args={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})
    with open(DATA, "w") as out:
        for item in load_prompts(source):
            out.write(json.dumps({"question": item.question, "answer": item.answer}) + "\n")


def wait_for(port: int, server: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited during start-up"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).close()
            return
        except OSError:
            time.sleep(3)
    raise TimeoutError("the server did not come up")


def soft_check(port: int, model: str) -> int:
    """Soft steps in the server's answer to one plain chat request, as lm-eval sends them."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "What is 3 + 4?"}],
                       "max_tokens": 8, "temperature": 0.0}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        choice = json.load(response)["choices"][0]
    return (choice.get("soft_thinking") or {}).get("num_soft_steps", 0)


def evaluate(model: str, soft: bool, port: int, limit: int, out_dir: Path) -> dict:
    serve = [str(REPO / ".venv" / "bin" / "vllm-soft"), "serve", model, "--enforce-eager", "--port", str(port),
             "--max-model-len", "1024", *(["--soft-thinking"] if soft else [])]
    label = "soft" if soft else "plain"
    with open(out_dir / f"server_{label}.log", "w") as log:
        server = subprocess.Popen(serve, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(port, server)
        steps = soft_check(port, model)
        assert (steps > 0) == soft, f"{label} server: {steps} soft steps on a plain request"
        start = time.perf_counter()
        command = [
            sys.executable, "-m", "lm_eval", "--model", "local-chat-completions", "--tasks", "vllm_soft_arith_1digit",
            "--include_path", str(TASK_DIR), "--apply_chat_template", "--limit", str(limit),
            "--model_args", f"model={model},base_url=http://127.0.0.1:{port}/v1/chat/completions,"
                            "num_concurrent=8,max_retries=1,tokenized_requests=False",
            "--output_path", str(out_dir / label),
        ]
        print(f"[lm-eval] {label}: {' '.join(command)}", flush=True)
        subprocess.run(command, cwd=REPO, check=True)
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=120)
    results = next((out_dir / label).rglob("results_*.json"))
    accuracy = json.loads(results.read_text())["results"]["vllm_soft_arith_1digit"]["exact_match,first_number"]
    return {"server": label, "accuracy": accuracy, "seconds": round(seconds, 1), "soft_steps_on_check": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=100, help="questions evaluated")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lm_eval")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    write_data(max(args.limit, 100), seed=2024)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [evaluate(args.model, soft, args.port, args.limit, args.out) for soft in (True, False)]
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| server | exact match | seconds |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['server']} | {row['accuracy']:.3f} | {row['seconds']} |")


if __name__ == "__main__":
    main()
