"""The worker's soft step without an engine: batch views in (as the model-runner patch
builds them from vLLM's runner), injected inputs, emitted tokens and trace rows out."""

import numpy as np
import torch
from vllm import SamplingParams

from vllm_soft import records, soft_math, soft_step, stateless_random
from vllm_soft.params import SoftThinkingParams
from vllm_soft.worker import BatchView, SoftThinkingRunner

VOCAB, HIDDEN = 300, 16
TABLE = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(3))
PROMPT_LENGTHS = {"a": 5, "b": 6, "c": 7, "d": 8}
KNOBS = {
    "a": {"top_k": 5, "max_soft_steps": 2},
    "c": {"top_k": 3, "mode": "add", "scale": 0.5, "noise": "gumbel", "tau": 0.5, "emit": "sample"},
    "d": {"top_k": 4, "temperature": 1.2},
}
SEEDS = {"a": 1, "c": 2, "d": 3}


def embed(ids: torch.Tensor) -> torch.Tensor:
    return TABLE[ids]


def view(req_ids, scheduled, computed, discarded=None) -> BatchView:
    return BatchView(
        req_ids=list(req_ids),
        query_starts=np.concatenate([[0], np.cumsum(scheduled)]).astype(np.int32),
        num_computed=np.array(computed, dtype=np.int64),
        discarded=np.zeros(len(req_ids), bool) if discarded is None else np.array(discarded),
    )


def expected_step(req_ids, logits, steps_done):
    """The soft step of these requests computed directly (no slot tables)."""
    rows = [
        (SoftThinkingParams(noise="none").with_overrides(KNOBS[r]), stateless_random.request_seed(SEEDS[r], 0, r), steps_done[r])
        for r in req_ids
    ]
    return soft_step.soft_step(logits, soft_step.StepKnobs.for_requests(rows), embed)


def test_plan_inject_run_commit_over_three_steps_and_a_recompute():
    worker = SoftThinkingRunner(SoftThinkingParams(noise="none"), torch.device("cpu"), VOCAB, HIDDEN, torch.float32, 0,
                                max_num_reqs=2, compile_step=False)  # 2 slots: registering 3 grows the tables
    for req_id, length in PROMPT_LENGTHS.items():
        extra = {"soft_thinking": KNOBS[req_id]} if req_id in KNOBS else None
        worker.register(req_id, SamplingParams(seed=SEEDS.get(req_id), extra_args=extra), length)
    assert set(worker.requests) == {"a", "c", "d"}
    logits = torch.randn(3, 4, VOCAB, generator=torch.Generator().manual_seed(4)) * 2

    # Step 1: the prompts; d's chunk does not end its prompt, so vLLM discards its sample.
    prefill = view("abcd", list(PROMPT_LENGTHS.values()), [0, 0, 0, 0], [False, False, False, True])
    ids = torch.arange(sum(PROMPT_LENGTHS.values()))
    assert worker.inject(prefill, ids, None, embed) == (ids, None)  # nothing soft to feed yet
    plan = worker.plan(prefill)
    assert (plan.rows, plan.req_ids, plan.all_rows) == ([0, 2], ["a", "c"], False)
    emitted = worker.run(plan, logits[0], embed)
    first = expected_step("ac", logits[0, [0, 2]], {"a": 0, "c": 0})
    assert torch.equal(emitted, first.emitted_B)
    rows = worker.commit(plan, [[1], [1], [1], []], [6, 8])
    assert rows.req_ids == ["a", "c"]
    np.testing.assert_array_equal(rows.payload, first.packed().numpy())

    # Step 2: one token each; soft rows get their pending input, plain ones keep theirs.
    decode = view("abcd", [1, 1, 1, 1], [5, 6, 7, 8])
    ids = torch.tensor([int(first.emitted_B[0]), 11, int(first.emitted_B[1]), 12])
    _, inputs = worker.inject(decode, ids, None, embed)
    concept = soft_math.weighted_embeddings(first.weights_BK, embed(first.token_ids_BK))
    torch.testing.assert_close(inputs[0], concept[0])
    torch.testing.assert_close(inputs[2], embed(first.emitted_B[1]) + 0.5 * concept[1])
    torch.testing.assert_close(inputs[[1, 3]], embed(ids[[1, 3]]))
    step_2_input_c = inputs[2].clone()
    plan = worker.plan(decode)
    assert plan.req_ids == ["a", "c", "d"]
    worker.run(plan, logits[1], embed)
    second = expected_step("acd", logits[1, [0, 2, 3]], {"a": 1, "c": 1, "d": 0})
    rows = worker.commit(plan, [[1]] * 4, [7, 9, 9])
    entries = records.unpack_rows(rows.payload)
    assert [e["end_reason"] for e in entries] == ["budget", None, None]  # a's budget of 2 soft steps
    np.testing.assert_allclose(rows.payload, second.packed().numpy(), rtol=1e-6, atol=1e-9)

    # Step 3: a thinks no more; c is recomputed from scratch after a preemption, its soft
    # positions rebuilt from the records (position 7) and the pending input (position 8).
    recompute = view("abcd", [1, 1, 9, 1], [6, 7, 0, 9])
    ids = torch.arange(12)
    ids[2 + 7], ids[2 + 8] = first.emitted_B[1], second.emitted_B[1]  # c's generated tokens
    _, inputs = worker.inject(recompute, ids, None, embed)
    torch.testing.assert_close(inputs[2 + 7], step_2_input_c)
    concept = soft_math.weighted_embeddings(second.weights_BK, embed(second.token_ids_BK))
    torch.testing.assert_close(inputs[2 + 8], embed(second.emitted_B[1]) + 0.5 * concept[1])
    torch.testing.assert_close(inputs[[0, 1] + list(range(2, 9))], embed(ids[[0, 1] + list(range(2, 9))]))
    assert worker.plan(recompute).req_ids == ["c", "d"]

    worker.forget(["a", "c", "d"])
    assert worker.requests == {} and worker.plan(decode) is None


def test_gated_requests_use_the_model_folders_gate_and_rebuild_after_a_preemption(tmp_path, caplog):
    from vllm_soft.gate import GateSettings, fresh_gate, save_gate

    gate = fresh_gate(HIDDEN, GateSettings(retention_min=0.4, retention_max=0.9, init_std=0.3, seed=4))
    save_gate(tmp_path, gate)
    worker = SoftThinkingRunner(SoftThinkingParams(noise="none"), torch.device("cpu"), VOCAB, HIDDEN, torch.float32, 0,
                                max_num_reqs=2, compile_step=False, model_path=str(tmp_path))
    worker.register("g", SamplingParams(seed=5, extra_args={"soft_thinking": {"mode": "gate", "top_k": 6}}), 4)
    logits = torch.randn(2, 1, VOCAB, generator=torch.Generator().manual_seed(6)) * 2

    def gated(step_out):
        latent = soft_math.normalized_concept(step_out.weights_BK, embed(step_out.token_ids_BK))
        return soft_math.gated_inputs(embed(step_out.emitted_B), latent, gate)[0][0]

    plan = worker.plan(view("g", [4], [0]))
    worker.run(plan, logits[0], embed)
    first = records.unpack_rows(worker.commit(plan, [[1]], [5]).payload)[0]
    out = soft_step.soft_step(logits[0], plan.knobs, embed, gate=gate)
    assert first["gate_retention"] == float(out.gate_retention_B[0])
    _, inputs = worker.inject(view("g", [1], [4]), torch.tensor([first["emitted"]]), None, embed)
    torch.testing.assert_close(inputs[0], gated(out))
    # A push's gate is used from the next step on.
    gate = fresh_gate(HIDDEN, GateSettings(retention_min=0.2, retention_max=0.5, init_std=0.5, seed=9))
    worker.set_gate(gate)
    plan = worker.plan(view("g", [1], [4]))
    worker.run(plan, logits[1], embed)
    second = records.unpack_rows(worker.commit(plan, [[1]], [6]).payload)[0]
    out_2 = soft_step.soft_step(logits[1], plan.knobs, embed, gate=gate)
    # A recompute after a preemption: position 4 rebuilt from its record (with the gate
    # the worker holds), position 5 the pending input.
    ids = torch.arange(6)
    ids[4], ids[5] = first["emitted"], second["emitted"]
    _, inputs = worker.inject(view("g", [6], [0]), ids, None, embed)
    torch.testing.assert_close(inputs[4], gated(out))
    torch.testing.assert_close(inputs[5], gated(out_2))
    torch.testing.assert_close(inputs[:4], embed(ids[:4]))

    # A folder without a gate: a fresh seeded one, and a warning that says so.
    bare = SoftThinkingRunner(SoftThinkingParams(noise="none"), torch.device("cpu"), VOCAB, HIDDEN, torch.float32, 0,
                              max_num_reqs=2, compile_step=False, model_path=str(tmp_path / "missing"))
    with caplog.at_level("WARNING", logger="vllm.vllm_soft"):
        assert torch.equal(bare.gate().weight_r_HH, fresh_gate(HIDDEN).weight_r_HH)
    assert "fresh gate" in caplog.text


def test_hidden_requests_feed_back_their_hidden_states_and_rebuild_them_after_a_preemption():
    """Mode 'hidden' with K = 3 beside a plain request: latent step k's input is the hidden
    state of the row that sampled step k (the last latent's too, though thinking ended with
    it); a recompute puts every recorded latent back at its position."""
    worker = SoftThinkingRunner(SoftThinkingParams(noise="none"), torch.device("cpu"), VOCAB, HIDDEN, torch.float32, 0,
                                max_num_reqs=2, compile_step=False)
    worker.register("h", SamplingParams(extra_args={"soft_thinking": {"mode": "hidden", "max_soft_steps": 3}}), 4)
    worker.register("p", SamplingParams(), 5)
    zero = SamplingParams(extra_args={"soft_thinking": {"mode": "hidden", "max_soft_steps": 0}})
    worker.register("z", zero, 5)
    assert set(worker.requests) == {"h"}, "K = 0 decodes plainly"
    logits = torch.randn(4, 2, VOCAB, generator=torch.Generator().manual_seed(5)) * 2
    hidden = torch.randn(4, 2, HIDDEN, generator=torch.Generator().manual_seed(6))
    ends, fed = [], []
    for step in range(4):
        batch = view("hp", [4, 5], [0, 0]) if step == 0 else view("hp", [1, 1], [3 + step, 4 + step])
        ids = torch.arange(9) if step == 0 else torch.tensor([7, 8])
        _, inputs = worker.inject(batch, ids, None, embed)
        if step:
            fed.append(inputs[0].clone())
            torch.testing.assert_close(inputs[1], embed(ids[1]))
        plan = worker.plan(batch)
        if step == 3:
            assert plan is None, "thinking ended with the third latent step"
            break
        worker.step_hidden = hidden[step]
        emitted = worker.run(plan, logits[step, :1], embed)
        assert int(emitted[0]) == int(logits[step, 0].argmax()), "a latent step shows its argmax"
        entry, = records.unpack_rows(worker.commit(plan, [[1], [1]], [5 + step]).payload)
        assert entry["latent"] == hidden[step, 0].double().tolist() and entry["logprob"] is None
        ends.append(entry["end_reason"])
    assert ends == [None, None, "budget"]
    for k, vector in enumerate(fed):
        torch.testing.assert_close(vector, hidden[k, 0], rtol=0, atol=0)

    # Preempted and recomputed from scratch: positions 4-6 get the recorded latents.
    recompute = view("hp", [7, 1], [0, 8])
    _, inputs = worker.inject(recompute, torch.arange(8), None, embed)
    torch.testing.assert_close(inputs[4:7], hidden[:3, 0], rtol=0, atol=0)
    torch.testing.assert_close(inputs[:4], embed(torch.arange(4)))
