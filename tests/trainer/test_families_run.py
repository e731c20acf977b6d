"""Every family of the matrix beyond Llama (whose run is tests/trainer/test_run.py) trained
one step end to end, as users start it (`trainer/run.py --config configs/smoke.yaml
model=tiny-<family>`: Ray, a rollout engine, two FSDP learner ranks over gloo, a weight push,
a checkpoint), then that checkpoint served by `vllm-soft serve --soft-thinking` and asked by
an OpenAI client. The reasoning family (Qwen3, whose tokenizer has ``<think>``/``</think>``)
is served with ``--reasoning-parser deepseek_r1``: its soft span is the reply's reasoning
and the answer after ``</think>`` its content."""

import sys
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from openai_server import openai_server
from trainer_process import SMOKE, finish, start_trainer

from trainer import checkpoints
from trainer.metrics import read_metrics
from vllm_soft import soft_knobs, soft_summary
from vllm_soft.families import FAMILIES

pytestmark = pytest.mark.slow

SOFT_SPAN = 4
RUN_FAMILIES = [family for family in FAMILIES if family != "llama"]


@pytest.fixture(scope="module")
def training_runs(request, tmp_path_factory) -> dict[str, Future]:
    """Each selected family's one-step run, started in order one at a time in the background,
    so the next family trains while a test serves the last one's checkpoint (one Ray cluster
    at a time: two runs would each start one on the same machine)."""
    root = tmp_path_factory.mktemp("family_runs")
    selected = [item.callspec.params["family"] for item in request.session.items
                if item.originalname == "test_one_training_step_then_its_checkpoint_served"]

    def train(family: str):
        run_dir = root / family
        finish(start_trainer(["--config", SMOKE, f"model=tiny-{family}", "steps=1", "eval.num_prompts=0",
                              f"output_dir={run_dir}"], root))
        return run_dir

    runner = ThreadPoolExecutor(max_workers=1)
    yield {family: runner.submit(train, family) for family in selected}
    runner.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("family", RUN_FAMILIES)
def test_one_training_step_then_its_checkpoint_served(family, training_runs):
    run_dir = training_runs[family].result(timeout=900)
    (step,) = read_metrics(run_dir)  # no evaluation: step 0 logs nothing
    assert step["logprob_gap"] <= 1e-3, "the learner replays the engine's rollouts"
    assert step["push_checksum_match"], "the engine holds exactly the learner's weights"
    assert step["grad_norm"] > 0 and step["soft_step_fraction"] > 0
    model = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(run_dir))[-1] / "model"

    thinking = family == "qwen3"
    command = [sys.executable, "-m", "vllm_soft.cli", "serve", str(model), "--soft-thinking", "--enforce-eager",
               "--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", str(1 << 28),
               *(["--reasoning-parser", "deepseek_r1"] if thinking else [])]
    with openai_server(command) as (client, served, _):
        reply = client.chat.completions.create(
            model=served, messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=12, temperature=0.0,
            extra_body={"vllm_xargs": {"soft_thinking_top_k": 4, "soft_thinking_max_soft_steps": SOFT_SPAN}},
        ).choices[0]
    assert soft_summary(reply) == {"num_soft_steps": SOFT_SPAN, "end_reason": "budget", "cold_stop": False}
    if thinking:  # thinking ended at </think> (think_end 'auto'), which the parser splits at
        assert soft_knobs(reply)["think_end"] == "</think>"
        assert reply.message.reasoning and reply.message.content
        assert "</think>" not in reply.message.reasoning + reply.message.content
    else:
        assert soft_knobs(reply)["think_end"] is None and reply.message.content
