"""The engine's batched soft step, driven directly (no engine): rows are independent of
the batch they are in, and every output is what the row's knobs say."""

import dataclasses
import math

import pytest
import torch

from vllm_soft import records, soft_math, soft_step, stateless_random
from vllm_soft.params import SoftThinkingParams

VOCAB, HIDDEN = 300, 16
TABLE = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(0))


def embed(ids: torch.Tensor) -> torch.Tensor:
    return TABLE[ids]


def knobs_for(rows: list[tuple[SoftThinkingParams, int, int]]) -> soft_step.StepKnobs:
    """StepKnobs for (params, seed, soft steps done) rows."""
    return soft_step.StepKnobs.for_requests(rows)


MIXED = [
    SoftThinkingParams(noise="none"),
    SoftThinkingParams(top_k=3, noise="gumbel", tau=0.5, emit="sample"),
    SoftThinkingParams(top_k=40, top_p=1.0, min_p=0.0, noise="dirichlet", alpha=2.0, mode="add", scale=0.5),
    SoftThinkingParams(noise="none", top_k=1),
    SoftThinkingParams(noise="none", top_k=8, temperature=1.3, emit="sample", mode="add"),
    SoftThinkingParams(top_k=20, noise="gumbel", tau=2.0),
    SoftThinkingParams(top_k=5, top_p=1.0, noise="dirichlet", alpha=0.5, emit="sample"),
    SoftThinkingParams(noise="none", top_k=6, multiplex=3, emit="sample"),
    SoftThinkingParams(noise="none", top_k=6, top_p=1.0, multiplex=4, multiplex_replacement=False, multiplex_weights="uniform", mode="add"),
    SoftThinkingParams(top_k=10, noise="gumbel", tau=0.5, emit="sample", action="token"),
    SoftThinkingParams(top_k=7, noise="gaussian", sigma=0.3, emit="sample"),
    SoftThinkingParams(top_k=4, noise="gaussian", sigma=2.0, mode="add", scale=0.5),
]


def _logits(rows: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2


def test_each_row_is_the_same_alone_and_inside_a_batch():
    """Same support, draws and emission; weights equal to float32 rounding (the filter
    normalises over the batch's widest support, so sums run over other paddings)."""
    rows = [(params, 1000 + i, 3 * i) for i, params in enumerate(MIXED * 3)]
    logits = _logits(len(rows))
    batch = soft_step.soft_step(logits, knobs_for(rows), embed, hidden_size=HIDDEN)
    for i, row in enumerate(rows):
        alone = soft_step.soft_step(logits[i : i + 1], knobs_for([row]), embed, hidden_size=HIDDEN)
        kept = int(alone.kept_B[0])
        assert int(batch.kept_B[i]) == kept
        assert torch.equal(batch.token_ids_BK[i, :kept], alone.token_ids_BK[0, :kept])
        torch.testing.assert_close(batch.weights_BK[i, :kept], alone.weights_BK[0, :kept], rtol=1e-6, atol=1e-7)
        assert int(batch.emitted_B[i]) == int(alone.emitted_B[0])
        torch.testing.assert_close(batch.logprob_B[i], alone.logprob_B[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch.next_inputs_BH[i], alone.next_inputs_BH[0], rtol=1e-6, atol=1e-6)


def test_draws_depend_on_seed_and_step():
    params = SoftThinkingParams(top_k=10, top_p=1.0, noise="gumbel", emit="sample")
    logits = _logits(1).expand(4, -1)
    out = soft_step.soft_step(logits, knobs_for([(params, 1, 0), (params, 1, 0), (params, 1, 1), (params, 2, 0)]), embed, hidden_size=HIDDEN)
    assert torch.equal(out.weights_BK[0], out.weights_BK[1])
    assert not torch.equal(out.weights_BK[0], out.weights_BK[2])
    assert not torch.equal(out.weights_BK[0], out.weights_BK[3])


def test_top_k_1_without_noise_is_greedy():
    logits = _logits(8)
    out = soft_step.soft_step(logits, knobs_for([(SoftThinkingParams(noise="none", top_k=1), i, 0) for i in range(8)]), embed, hidden_size=HIDDEN)
    assert torch.equal(out.emitted_B, logits.argmax(-1))
    assert torch.equal(out.next_inputs_BH, TABLE[logits.argmax(-1)])
    assert torch.equal(out.logprob_B, torch.zeros(8, dtype=torch.float64))
    assert out.end_code_B.tolist() == [0] * 8


def _action_knobs(params: SoftThinkingParams, ended: bool) -> soft_math.ActionKnobs:
    def one(value, dtype):
        return torch.tensor([value], dtype=dtype)

    return soft_math.ActionKnobs(
        noise_B=one(soft_math.NOISE_CODES[params.noise], torch.long), alpha_B=one(params.alpha, torch.float64),
        tau_B=one(params.tau, torch.float64), sample_B=one(params.emit == "sample", torch.bool),
        multiplex_B=one(params.multiplex, torch.long), replacement_B=one(params.multiplex_replacement, torch.bool),
        token_only_B=one(params.action == "token", torch.bool), ended_B=one(ended, torch.bool),
        noise_kinds=frozenset({params.noise}), any_multiplex=params.multiplex > 0,
    )


def test_logprob_is_step_logprob_of_each_row():
    rows = [(params, 7 + i, i) for i, params in enumerate(MIXED)]
    logits = _logits(len(rows), seed=3)
    out = soft_step.soft_step(logits, knobs_for(rows), embed, hidden_size=HIDDEN)
    for i, (params, _, _) in enumerate(rows):
        kept = int(out.kept_B[i])
        dist = soft_math.filter_distribution(
            logits[i : i + 1], torch.tensor([params.temperature]), torch.tensor([params.top_k]),
            torch.tensor([params.top_p]), torch.tensor([params.min_p]),
        )
        base = dist.weights_BK[:, :kept].double()
        emitted = (dist.token_ids_BK[:, :kept] == out.emitted_B[i]).reshape(1, kept)
        action = _action_knobs(params, ended=False)
        if params.noise == "gaussian":  # the concept's noise, regenerated from (seed, step)
            noise = params.sigma * stateless_random.normals(torch.tensor([7 + i]), torch.tensor([i]), HIDDEN)
            action.embedding_density_B = soft_math.gaussian_log_density(noise, torch.tensor([params.sigma]))
        expected = soft_math.step_logprob(
            base.log(), out.log_weights_BK[i : i + 1, :kept], torch.ones_like(emitted), emitted,
            out.draws_BK[i : i + 1, :kept], action,
        )
        torch.testing.assert_close(out.logprob_B[i : i + 1], expected, rtol=1e-5, atol=1e-5)  # float32 filter


def test_next_inputs_are_the_mixtures_of_the_fed_back_weights():
    rows = [(params, i, 0) for i, params in enumerate(MIXED)]
    out = soft_step.soft_step(_logits(len(rows), seed=4), knobs_for(rows), embed, hidden_size=HIDDEN)
    for i, (params, _, _) in enumerate(rows):
        kept = int(out.kept_B[i])
        concept = (out.weights_BK[i, :kept].float().unsqueeze(-1) * TABLE[out.token_ids_BK[i, :kept]]).sum(0)
        if params.noise == "gaussian":  # noise on the concept, from the draws of (seed, step 0)
            concept = concept + params.sigma * stateless_random.normals(torch.tensor([i]), torch.tensor([0]), HIDDEN)[0].float()
        expected = concept if params.mode == "replace" else TABLE[out.emitted_B[i]] + params.scale * concept
        torch.testing.assert_close(out.next_inputs_BH[i], expected, rtol=1e-5, atol=1e-5)


def test_cold_stop_forces_think_end_without_a_logprob():
    params = SoftThinkingParams(noise="none", entropy_threshold=100.0, patience=1, think_end=5, think_end_id=5)
    budget = SoftThinkingParams(noise="none", max_soft_steps=4, think_end=6, think_end_id=6)
    out = soft_step.soft_step(_logits(2, seed=5), knobs_for([(params, 0, 0), (budget, 0, 3)]), embed, hidden_size=HIDDEN)
    assert out.emitted_B.tolist() == [5, 6]
    assert [records.END_REASONS[c] for c in out.end_code_B.tolist()] == ["cold_stop", "budget"]
    assert torch.isnan(out.logprob_B).all()


@pytest.mark.parametrize("ending", ["budget", "think_end"])
def test_a_step_that_ends_thinking_is_scored_as_its_token(ending):
    """Its mixture is never fed back: the action is the emitted token, log w_y on the kept
    support (noise-free weights), whatever the noise; not the density of unused weights."""
    noisy = [SoftThinkingParams(top_k=6, noise="gumbel", tau=0.5, emit="sample"),
             SoftThinkingParams(top_k=6, noise="dirichlet", alpha=1.0, emit="sample"),
             SoftThinkingParams(noise="none", top_k=6, multiplex=3, emit="sample")]
    logits = _logits(3, seed=9)
    thinking = soft_step.soft_step(logits, knobs_for([(p, 11 + i, 2) for i, p in enumerate(noisy)]), embed, hidden_size=HIDDEN)
    if ending == "budget":  # no think-end token: the budget ends thinking on the sampled token
        rows = [(dataclasses.replace(p, max_soft_steps=3), 11 + i, 2) for i, p in enumerate(noisy)]
    else:  # the same draws emit the same token, now the think-end token
        rows = [(dataclasses.replace(p, think_end=int(t), think_end_id=int(t)), 11 + i, 2)
                for i, (p, t) in enumerate(zip(noisy, thinking.emitted_B))]
    out = soft_step.soft_step(logits, knobs_for(rows), embed, hidden_size=HIDDEN)
    assert torch.equal(out.emitted_B, thinking.emitted_B)
    for i, (params, _, _) in enumerate(rows):
        assert records.END_REASONS[int(out.end_code_B[i])] == ending
        dist = soft_math.filter_distribution(
            logits[i : i + 1], torch.tensor([params.temperature]), torch.tensor([params.top_k]),
            torch.tensor([params.top_p]), torch.tensor([params.min_p]),
        )
        kept = int(out.kept_B[i])
        slot = dist.token_ids_BK[0, :kept].tolist().index(int(out.emitted_B[i]))
        expected = math.log(float(dist.weights_BK[0, slot]))
        assert float(out.logprob_B[i]) == pytest.approx(expected, abs=1e-5)
        assert abs(float(thinking.logprob_B[i]) - expected) > 0.1, "while thinking goes on, the density or the draws"


def test_packed_rows_unpack_to_trace_entries():
    forced = SoftThinkingParams(noise="none", max_soft_steps=1, think_end=6, think_end_id=6)
    rows = [(params, i, 0) for i, params in enumerate(MIXED)] + [(forced, 0, 0)]
    out = soft_step.soft_step(_logits(len(rows), seed=6), knobs_for(rows), embed, hidden_size=HIDDEN)
    entries = records.unpack_rows(out.packed().numpy())
    assert len(entries) == len(rows)
    for i, entry in enumerate(entries):
        kept = int(out.kept_B[i])
        assert entry["token_ids"] == out.token_ids_BK[i, :kept].tolist()
        assert entry["weights"] == out.weights_BK[i, :kept].tolist()
        assert entry["emitted"] == int(out.emitted_B[i])
        assert entry["entropy"] == pytest.approx(float(out.entropy_B[i]))
        assert math.isclose(sum(entry["weights"]), 1.0, rel_tol=1e-6)
        # Log-weights are exact where a noisy weight underflowed to 0 (then they are finite);
        # None only where a weight is 0 by construction (an undrawn multiplex token).
        for weight, log_weight in zip(entry["weights"], entry["log_weights"]):
            assert weight == 0.0 if log_weight is None else weight == pytest.approx(math.exp(log_weight), rel=1e-12, abs=0)
        params, seed, _ = rows[i]
        assert entry["seed"] == seed
        assert entry["noise_scale"] == (params.sigma if params.noise == "gaussian" else None)
        assert (entry["draws"] is not None) == (params.multiplex > 0)
        if params.multiplex:  # the emitted sample is the first draw; the mixture holds the drawn tokens only
            slot = entry["token_ids"].index(entry["emitted"])
            assert entry["draws"][slot] >= 1 and (params.multiplex_replacement or entry["draws"][slot] == 1)
            assert [d > 0 for d in entry["draws"]] == [w > 0 for w in entry["weights"]]
            total = sum(entry["draws"]) if params.multiplex_replacement else max(entry["draws"])
            assert total == params.multiplex
    assert all(entry["end_reason"] is None for entry in entries[:-1])
    assert [entry["logprob"] for entry in entries[:-1]] == pytest.approx(out.logprob_B[:-1].tolist())
    assert (entries[-1]["end_reason"], entries[-1]["logprob"], entries[-1]["emitted"]) == ("budget", None, 6)


def test_a_trace_crosses_processes_as_blocks_and_unpacks_to_its_entries():
    """Steps of one request from batches of different largest top-k (row widths) travel
    as plain-msgpack blocks and come back as the entries of each step, positions in order."""
    import msgspec

    steps = []
    for step, batch_top_k in enumerate((3, 3, 20, 3)):
        rows = [(SoftThinkingParams(noise="none", top_k=3), 11, step), (SoftThinkingParams(noise="none", top_k=batch_top_k), 12, step)]
        steps.append(soft_step.soft_step(_logits(2, seed=20 + step), knobs_for(rows), embed, hidden_size=HIDDEN).packed().numpy())
    blocks = msgspec.msgpack.decode(msgspec.msgpack.encode(records.pack_trace([step[0] for step in steps])))
    assert [block["shape"] for block in blocks] == [[2, 22], [1, 90], [1, 22]]
    entries = records.unpack_trace(blocks)
    assert [entry["position"] for entry in entries] == [0, 1, 2, 3]
    for entry, step in zip(entries, steps):
        assert entry == {**records.unpack_rows(step[:1])[0], "position": entry["position"]}
    assert records.unpack_trace(records.pack_trace([])) == []


@pytest.fixture(scope="module")
def compiled_step():
    compiled = soft_step.CompiledSoftStep(VOCAB, torch.device("cpu"), top_k=10)
    compiled.stance = "fail_on_recompile"  # a call the start-up graphs cannot run fails the test
    return compiled


def _assert_same_step(got: soft_step.SoftStepOutput, want: soft_step.SoftStepOutput) -> None:
    assert torch.equal(got.kept_B, want.kept_B)
    assert torch.equal(got.token_ids_BK, want.token_ids_BK)
    assert torch.equal(got.emitted_B, want.emitted_B)
    assert torch.equal(got.end_code_B, want.end_code_B)
    torch.testing.assert_close(got.weights_BK, want.weights_BK, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.entropy_B, want.entropy_B, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logprob_B, want.logprob_B, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(got.next_inputs_BH, want.next_inputs_BH, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eager_rows", [False, True], ids=["compiled tail", "dirichlet, gaussian and multiplex rows: eager tail"])
def test_compiled_step_gives_the_eager_step(compiled_step, eager_rows):
    """The engine's compiled step (CPU; one graph with every compiled branch on) and the
    eager one (a branch per host flag) agree on every output for rows of every kind,
    masked tokens included, and a row's values do not depend on the batch it is in (its
    draws and statistics bitwise; weights to the rounding of sums over padding)."""
    kinds = [params for params in MIXED if eager_rows or (params.noise in ("none", "gumbel") and not params.multiplex)]
    rows = [(params, 50 + i, i) for i, params in enumerate(kinds * 3)]
    with torch.inference_mode():
        logits = _logits(len(rows), seed=7)
        logits[2, :150] = float("-inf")
        eager = soft_step.soft_step(logits, knobs_for(rows), embed, hidden_size=HIDDEN)
        fused = soft_step.soft_step(logits, knobs_for(rows), embed, compiled=compiled_step, hidden_size=HIDDEN)
        _assert_same_step(fused, eager)
        for i in [i for i, (params, _, _) in enumerate(rows) if params.top_k >= 3][:5]:  # below: eager
            alone = soft_step.soft_step(logits[i : i + 1], knobs_for([rows[i]]), embed, compiled=compiled_step, hidden_size=HIDDEN)
            kept = int(alone.kept_B[0])
            assert torch.equal(alone.token_ids_BK[0, :kept], fused.token_ids_BK[i, :kept])
            assert torch.equal(alone.emitted_B[0], fused.emitted_B[i])
            torch.testing.assert_close(alone.weights_BK[0, :kept], fused.weights_BK[i, :kept], rtol=1e-6, atol=1e-7)
            assert torch.equal(alone.entropy_B[0], fused.entropy_B[i])


def test_compiled_step_takes_any_batch_and_input_form_without_compiling_again(compiled_step):
    """Row counts, largest top-k, knob mixes and input forms (not inference tensors,
    float64, strided, one row) all run the graphs compiled at start-up."""
    rows = [(params, 9 + i, 2 * i) for i, params in enumerate(MIXED * 2)]
    with torch.inference_mode():
        logits = _logits(len(rows), seed=8)
        expected = soft_step.soft_step(logits, knobs_for(rows), embed, compiled=compiled_step, hidden_size=HIDDEN)
    wide = torch.zeros(len(rows), 2 * VOCAB, dtype=torch.float64)
    wide[:, ::2] = logits.double()
    for form in (logits.clone(), logits.double(), wide[:, ::2]):  # not inference tensors
        _assert_same_step(soft_step.soft_step(form, knobs_for(rows), embed, compiled=compiled_step, hidden_size=HIDDEN), expected)
    for count in (1, 3, 5):
        batch = [(params.with_overrides({"top_k": 2 + 9 * count}), seed, step) for params, seed, step in rows[:count]]
        got = soft_step.soft_step(logits[:count], knobs_for(batch), embed, compiled=compiled_step, hidden_size=HIDDEN)
        _assert_same_step(got, soft_step.soft_step(logits[:count], knobs_for(batch), embed, hidden_size=HIDDEN))


@pytest.mark.parametrize("think_end, latent_token", [(None, None), (5, 9)])
def test_hidden_rows_feed_back_their_hidden_state_for_exactly_k_steps(think_end, latent_token):
    """Coconut in one row beside a replace row: latent steps 0..K-1 feed back the row's
    hidden state (as is, or rescaled to a given norm), emit the latent token or the argmax,
    have no log-probability and record the fed vector exactly; thinking ends with step K-1,
    or with a forced think-end token at step K when one is set. The replace row is unchanged."""
    latent_steps, hidden = 3, torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(3)).bfloat16()
    replace = SoftThinkingParams(noise="none", top_k=4)
    plain = soft_step.soft_step(_logits(1, seed=7), knobs_for([(replace, 1, 0)]), embed)
    for rescale in (False, True):
        params = SoftThinkingParams(noise="none", mode="hidden", max_soft_steps=latent_steps, think_end_id=think_end,
                                    latent_token_id=latent_token, rescale_latent=rescale)
        ends = []
        for step in range(latent_steps + 1 if think_end is not None else latent_steps):
            logits = torch.cat((_logits(1, seed=7), _logits(1, seed=step)))
            out = soft_step.soft_step(logits, knobs_for([(replace, 1, 0), (params, 2, step)]), embed,
                                      hidden_BH=hidden, latent_norm=4.0)
            assert torch.equal(out.next_inputs_BH[0], plain.next_inputs_BH[0]) and int(out.emitted_B[0]) == int(plain.emitted_B[0])
            replace_entry, entry = records.unpack_rows(out.packed().numpy())
            assert replace_entry["latent"] is None, "a replace row has no latent"
            assert entry["logprob"] is None and math.isnan(float(out.logprob_B[1]))
            ends.append(entry["end_reason"])
            if step < latent_steps:
                expected = hidden[1].float()
                if rescale:
                    expected = (expected * (4.0 / expected.norm())).bfloat16().float()
                torch.testing.assert_close(out.next_inputs_BH[1], expected, rtol=0, atol=0)
                assert entry["latent"] == expected.double().tolist(), "the trace holds the fed vector exactly"
                assert entry["emitted"] == (latent_token if latent_token is not None else entry["token_ids"][0])
            else:
                assert entry["latent"] is None and entry["emitted"] == think_end
        assert ends == [None] * (len(ends) - 1) + ["budget"]
