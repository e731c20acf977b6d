"""HRPO's gate: its math (``soft_math.gated_inputs``), initialisation and files, engine-free."""

import math

import pytest
import torch

from vllm_soft import records, soft_math, soft_step
from vllm_soft.gate import GATE_WEIGHTS_FILE, GateSettings, fresh_gate, gate_state_dict, load_gate, save_gate
from vllm_soft.params import SoftThinkingParamError, SoftThinkingParams
from vllm_soft.soft_math import GATE_SHARPNESS, GateTensors, gate_lambda_for, gate_retention, gated_inputs, normalized_concept

HIDDEN = 24


def test_fresh_gate_keeps_the_token_embedding_mostly_and_a_stays_in_its_range():
    settings = GateSettings(retention_min=0.99, retention_max=0.999)
    gate = fresh_gate(HIDDEN, settings)
    token_BH = 3.0 * torch.randn(64, HIDDEN)
    a_BH, i_BH = gate_retention(token_BH, gate)
    # a = u^r with r in (0, 1): at least u >= r_min, below 1.
    assert a_BH.min() >= settings.retention_min and a_BH.max() < 1.0
    assert ((i_BH > 0) & (i_BH < 1)).all()
    # W ~ N(0, 0.02): the gates start near sigma(0) = 1/2.
    assert abs(gate.weight_r_HH.std().item() - settings.init_std) < 0.003
    assert torch.equal(gate.bias_r_H, torch.zeros(HIDDEN)) and torch.equal(gate.bias_i_H, torch.zeros(HIDDEN))


def test_lambda_initialisation_inverts_the_retention():
    retention_H = torch.linspace(0.5, 0.999, HIDDEN, dtype=torch.float64)
    lambda_H = gate_lambda_for(retention_H)
    # r = 1: a = exp(-c softplus(-Λ)) = u exactly.
    a_H = torch.exp(-GATE_SHARPNESS * torch.nn.functional.softplus(-lambda_H))
    torch.testing.assert_close(a_H, retention_H, rtol=1e-12, atol=0)


def test_gated_input_matches_the_formula_written_out():
    gate = fresh_gate(HIDDEN, GateSettings(retention_min=0.3, retention_max=0.9, init_std=0.5, seed=3))
    token_H, latent_H = torch.randn(HIDDEN), torch.randn(HIDDEN)
    mixed_BH, a_BH = gated_inputs(token_H[None], latent_H[None], gate)
    for d in range(HIDDEN):  # one dimension at a time, in float64
        r = 1 / (1 + math.exp(-(gate.weight_r_HH[d].double() @ token_H.double()).item()))
        i = 1 / (1 + math.exp(-(gate.weight_i_HH[d].double() @ token_H.double()).item()))
        a = math.exp(-8.0 * math.log1p(math.exp(-gate.lambda_H[d].item())) * r)
        expected = a * token_H[d].item() + math.sqrt(1 - a * a + 1e-8) * i * latent_H[d].item()
        assert a_BH[0, d].item() == pytest.approx(a, rel=1e-5)
        assert mixed_BH[0, d].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_a_saturated_gate_feeds_the_token_embedding():
    gate = fresh_gate(HIDDEN)
    closed = GateTensors(gate.weight_r_HH, gate.bias_r_H, gate.weight_i_HH, gate.bias_i_H, torch.full((HIDDEN,), 1e4))
    token_BH, latent_BH = torch.randn(5, HIDDEN), 100.0 * torch.randn(5, HIDDEN)
    mixed_BH, a_BH = gated_inputs(token_BH, latent_BH, closed)
    assert torch.equal(a_BH, torch.ones_like(a_BH))
    # What remains of the latent is sqrt(1e-8) = 1e-4 of it, gated by i < 1.
    assert (mixed_BH - token_BH).abs().max() <= 1e-4 * latent_BH.abs().max()


def test_gated_input_gradients_check_in_float64():
    gate = fresh_gate(6, GateSettings(retention_min=0.5, retention_max=0.95, init_std=0.3))
    params = [t.double().requires_grad_() for t in gate_state_dict(gate).values()]
    token_BH = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    latent_BH = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)

    def mixed(token, latent, *tensors):
        return gated_inputs(token, latent, GateTensors(*tensors))[0]

    assert torch.autograd.gradcheck(mixed, (token_BH, latent_BH, *params))


def test_normalized_concept_is_the_mixture_over_the_weights_norm():
    embeds_BKH = torch.randn(2, 3, HIDDEN)
    one_hot = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    concept_BH = normalized_concept(one_hot, embeds_BKH)
    torch.testing.assert_close(concept_BH[0], embeds_BKH[0, 1])
    torch.testing.assert_close(concept_BH[1], (embeds_BKH[1, 0] + embeds_BKH[1, 1]) / math.sqrt(2))


def test_the_gate_round_trips_through_the_model_folder(tmp_path):
    settings = GateSettings(retention_min=0.95, retention_max=0.98, seed=7)
    gate = fresh_gate(HIDDEN, settings)
    trained = GateTensors(gate.weight_r_HH + 1, gate.bias_r_H - 2, gate.weight_i_HH, gate.bias_i_H, gate.lambda_H * 3)
    save_gate(tmp_path, trained, settings)
    # vLLM loads every top-level *.safetensors file as model weights: the gate stays out of them
    # (tests/trainer/test_run.py serves such a folder).
    assert not list(tmp_path.glob("*.safetensors"))
    loaded, loaded_settings, fresh = load_gate(tmp_path, HIDDEN)
    assert not fresh and loaded_settings == settings
    for name, tensor in gate_state_dict(trained).items():
        assert torch.equal(gate_state_dict(loaded)[name], tensor), name


def test_a_folder_without_a_gate_gets_the_same_fresh_gate_everywhere(tmp_path):
    first, settings, fresh = load_gate(tmp_path, HIDDEN)
    second, _, _ = load_gate(tmp_path, HIDDEN)
    assert fresh and settings == GateSettings()
    assert all(torch.equal(a, b) for a, b in zip(gate_state_dict(first).values(), gate_state_dict(second).values()))
    # The settings file alone decides how the fresh gate is drawn.
    save_gate(tmp_path, first, GateSettings(seed=5))
    (tmp_path / GATE_WEIGHTS_FILE).unlink()
    reseeded, settings, fresh = load_gate(tmp_path, HIDDEN)
    assert fresh and settings.seed == 5
    assert not torch.equal(reseeded.weight_r_HH, first.weight_r_HH)


def test_gate_files_that_do_not_fit_the_model_are_refused(tmp_path):
    save_gate(tmp_path, fresh_gate(HIDDEN))
    with pytest.raises(ValueError, match="hidden_size 24"):
        load_gate(tmp_path, 32)
    with pytest.raises(ValueError, match="retention_min"):
        GateSettings(retention_min=0.999, retention_max=0.99)


# -- the gated soft step (engine-free) ----------------------------------------------

VOCAB = 200
TABLE = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(1))
GATED = [
    SoftThinkingParams(noise="none", mode="gate", temperature=0.5, top_k=50, emit="sample"),
    SoftThinkingParams(noise="none", mode="gate", top_k=4),
    SoftThinkingParams(mode="gate", top_k=8, noise="gumbel", tau=0.5, emit="sample"),
    SoftThinkingParams(noise="none", mode="gate", top_k=6, multiplex=3, emit="sample"),
]
OTHERS = [SoftThinkingParams(noise="none"), SoftThinkingParams(noise="none", mode="add", top_k=5, emit="sample")]


def _step(rows, logits, gate):
    return soft_step.soft_step(logits, soft_step.StepKnobs.for_requests(rows), TABLE.__getitem__, hidden_size=HIDDEN,
                               gate=gate)


def test_gated_rows_feed_hrpos_input_beside_other_modes():
    gate = fresh_gate(HIDDEN, GateSettings(retention_min=0.4, retention_max=0.9, init_std=0.3))
    rows = [(params, 50 + i, i) for i, params in enumerate(GATED + OTHERS)]
    logits = 2 * torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(2))
    out = _step(rows, logits, gate)
    entries = records.unpack_rows(out.packed().numpy())
    for i, (params, _, _) in enumerate(rows):
        kept = int(out.kept_B[i])
        ids, weights = out.token_ids_BK[i, :kept], out.weights_BK[i, :kept]
        if params.mode != "gate":
            assert entries[i]["gate_retention"] is None
            continue
        token = TABLE[out.emitted_B[i]]
        latent = (weights.double() @ TABLE[ids].double()) / weights.double().norm()
        expected, a = gated_inputs(token[None], latent[None].float(), gate)
        torch.testing.assert_close(out.next_inputs_BH[i], expected[0], rtol=1e-5, atol=1e-6)
        assert entries[i]["gate_retention"] == pytest.approx(float(a.mean()), rel=1e-6)
        # Alone, the row gets the same input.
        alone = _step([rows[i]], logits[i : i + 1], gate)
        torch.testing.assert_close(alone.next_inputs_BH[0], out.next_inputs_BH[i], rtol=1e-6, atol=1e-6)
    assert out.next_inputs_BH[len(GATED)].equal(
        soft_math.weighted_embeddings(out.weights_BK[len(GATED) :][:1], TABLE[out.token_ids_BK[len(GATED)]][None])[0]
    )


def test_a_saturated_gate_with_argmax_emission_feeds_the_greedy_token():
    gate = fresh_gate(HIDDEN)
    closed = GateTensors(gate.weight_r_HH, gate.bias_r_H, gate.weight_i_HH, gate.bias_i_H, torch.full((HIDDEN,), 1e4))
    rows = [(SoftThinkingParams(noise="none", mode="gate", top_k=15), i, 0) for i in range(6)]
    logits = 2 * torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(3))
    out = _step(rows, logits, closed)
    assert torch.equal(out.emitted_B, logits.argmax(-1))
    torch.testing.assert_close(out.next_inputs_BH, TABLE[logits.argmax(-1)], rtol=0, atol=1e-4 * float(TABLE.abs().max()))
    assert all(entry["gate_retention"] == 1.0 for entry in records.unpack_rows(out.packed().numpy()))


def test_gated_rows_without_a_gate_and_gaussian_gated_rows_are_refused():
    rows = [(SoftThinkingParams(noise="none", mode="gate"), 0, 0)]
    with pytest.raises(ValueError, match="mode 'gate' need the model's gate"):
        _step(rows, torch.randn(1, VOCAB), None)
    with pytest.raises(SoftThinkingParamError, match="noise 'gaussian'") as error:
        SoftThinkingParams(mode="gate", noise="gaussian")
    assert error.value.parameter == "noise"
