"""HRPO gate training end to end: `trainer/run.py` in mode gate (configs/smoke.yaml: two FSDP
ranks over gloo, the gate its own float32 unit) trains the gate with the model, pushes it to
the engine (checksums include it), saves it beside the checkpoint's weights, and
`vllm-soft serve CKPT/model --soft-thinking` serves it: the learner's replay of a served
gated completion gives the server's log-probs."""

import json
import sys

import pytest
import torch
from openai_server import openai_server
from trainer_process import SMOKE, finish, start_trainer

from trainer import checkpoints
from trainer.metrics import read_metrics
from trainer.policy import ReplayBatch, ReplayPolicy
from vllm_soft import soft_trace
from vllm_soft.gate import fresh_gate, gate_state_dict, load_gate
from vllm_soft.params import SoftThinkingParams

pytestmark = pytest.mark.slow

KNOBS = {"mode": "gate", "emit": "sample", "top_k": 8, "max_soft_steps": 6}
SETTINGS = ["steps=2", "eval.num_prompts=0", "algorithm.mode=gate",
            "learner.gate_learning_rate=0.01", "learner.gate_lambda_learning_rate=0.1"]


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory, tiny_model_path):
    run_dir = tmp_path_factory.mktemp("gate") / "run"
    finish(start_trainer(["--config", SMOKE, f"output_dir={run_dir}", *SETTINGS], run_dir.parent))
    return run_dir


def _hidden_size(model_folder) -> int:
    return json.loads((model_folder / "config.json").read_text())["hidden_size"]


def test_gate_training_replays_pushes_and_checkpoints_the_gate(gate_run):
    metrics = read_metrics(gate_run)
    first = metrics[1]
    assert first["logprob_gap"] <= 1e-3, "at step 1 the learner's gated inputs are the engine's"
    assert all(m["push_checksum_match"] for m in metrics[1:]), "the engines hold the learner's weights and gate"
    assert all(0.0 < m["hidden_share"] < 1.0 for m in metrics[1:])
    model = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(gate_run))[-1] / "model"
    hidden = _hidden_size(model)
    trained, _, fresh = load_gate(model, hidden)
    assert not fresh, "the checkpoint carries its gate"
    for name, start in gate_state_dict(fresh_gate(hidden)).items():
        assert not torch.equal(gate_state_dict(trained)[name], start), f"gate {name} trained"


def test_a_served_gate_checkpoint_gives_the_learners_logprobs(gate_run):
    """The server's log-probs of a gated completion (soft steps: their action; then plain
    tokens at temperature 1, where vLLM's raw log-probs are the sampled ones) equal the
    learner's replay of its trace with the checkpoint's weights and gate."""
    from transformers import AutoModelForCausalLM

    model_folder = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(gate_run))[-1] / "model"
    command = [sys.executable, "-m", "vllm_soft.cli", "serve", str(model_folder), "--soft-thinking",
               "--enforce-eager", "--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", str(1 << 28)]
    prompt = [1, 5, 9, 200, 31, 7]
    with openai_server(command) as (client, model, _):
        response = client.completions.create(
            model=model, prompt=prompt, max_tokens=10, temperature=1.0, seed=3, logprobs=0,
            extra_body={"return_token_ids": True,
                        "vllm_xargs": {"soft_thinking": 1, **{f"soft_thinking_{k}": v for k, v in KNOBS.items()}}},
        )
    choice = response.choices[0]
    trace = soft_trace(choice)
    assert len(trace) == KNOBS["max_soft_steps"] and all(0.0 < s["gate_retention"] < 1.0 for s in trace)
    served = [s["logprob"] for s in trace] + choice.logprobs.token_logprobs[len(trace):]

    hf_model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    gate, _, _ = load_gate(model_folder, _hidden_size(model_folder))
    batch = ReplayBatch([prompt], [list(choice.token_ids)], [list(trace)],
                        knobs=SoftThinkingParams().with_overrides(KNOBS), temperature=1.0)
    with torch.no_grad():
        replayed, mask = ReplayPolicy(hf_model, gate=gate)(batch)
    assert int(mask.sum()) == len(served) == 10
    assert max(abs(a - b) for a, b in zip(replayed[0].tolist(), served)) <= 1e-3
