"""Every soft knob changes what the engine does, in the way the spec says.

All variants run in one generate() on the default model (4 prompts each); each test
then compares the traces of two variants. Step 0 of every variant sees the same logits
(the prompt), which makes the first-step comparisons exact.
"""

import statistics

import pytest
from vllm import SamplingParams, TokensPrompt

from soft_checks import chat_prompts
from vllm_soft.trace import soft_trace

pytestmark = pytest.mark.slow

STEPS = 12
THINK_END = "<|im_end|>"
VARIANTS = {
    "default": {},
    "add": {"mode": "add"},
    "add_scale_0": {"mode": "add", "scale": 0.0},
    "top_k_2": {"top_k": 2},
    "top_p_0.3": {"top_p": 0.3},
    "min_p_0.3": {"min_p": 0.3},
    "temperature_0.3": {"temperature": 0.3},
    "temperature_1.5": {"temperature": 1.5},
    "emit_sample": {"emit": "sample", "temperature": 1.5},
    "temperature_1.5_argmax": {"temperature": 1.5},
    "dirichlet_alpha_0.5": {"noise": "dirichlet", "alpha": 0.5},
    "dirichlet_alpha_1000": {"noise": "dirichlet", "alpha": 1000.0},
    "gumbel_tau_0.1": {"noise": "gumbel", "tau": 0.1},
    "gumbel_tau_10": {"noise": "gumbel", "tau": 10.0},
    "cold_patience_1": {"entropy_threshold": 1.0, "patience": 1, "think_end": THINK_END},
    "cold_patience_3": {"entropy_threshold": 1.0, "patience": 3, "think_end": THINK_END},
    "budget_4_think_end": {"max_soft_steps": 4, "think_end": THINK_END},
    "budget_4_no_think_end": {"max_soft_steps": 4, "think_end": None},
}


@pytest.fixture(scope="module")
def runs(default_engine, default_tokenizer):
    """Variant name -> list of (token ids, trace), one per prompt; plus greedy."""
    prompts = chat_prompts(default_tokenizer, 4)
    requests, keys = [], []
    for name, knobs in {**VARIANTS, "greedy": None}.items():
        for i, prompt in enumerate(prompts):
            extra = None if knobs is None else {"soft_thinking": knobs}
            params = SamplingParams(temperature=0.0, max_tokens=STEPS, ignore_eos=True, seed=100 + i, extra_args=extra)
            requests.append((TokensPrompt(prompt_token_ids=prompt), params))
            keys.append(name)
    outputs = default_engine.generate([r for r, _ in requests], [p for _, p in requests], use_tqdm=False)
    result: dict[str, list] = {}
    for name, output in zip(keys, outputs):
        completion = output.outputs[0]
        result.setdefault(name, []).append((list(completion.token_ids), soft_trace(completion)))
    return result


def steps(runs, name):
    return [entry for _, trace in runs[name] for entry in trace]


def first_steps(runs, name):
    return [trace[0] for _, trace in runs[name]]


def weights_by_token(entry):
    return dict(zip(entry["token_ids"], entry["weights"]))


def test_mode_add_differs_from_replace(runs):
    """The first soft step sees only the prompt, so both modes agree on it; every later
    step follows a different input (the mixture added to E[y], not replacing it)."""
    pairs = [(add, replace) for (_, add), (_, replace) in zip(runs["add"], runs["default"])]
    assert all(len(add) > 1 and len(replace) > 1 for add, replace in pairs)
    for add, replace in pairs:
        assert add[0]["token_ids"] == replace[0]["token_ids"]
        assert add[0]["weights"] == pytest.approx(replace[0]["weights"], abs=1e-5)
    # A step's weights can agree (a peaked step keeps one token at weight 1); its
    # distribution's entropy moves with any change of input.
    assert sum(abs(add[1]["entropy"] - replace[1]["entropy"]) for add, replace in pairs) > 1e-3


def test_add_with_scale_0_is_greedy_and_scale_changes_it(runs):
    assert [t for t, _ in runs["add_scale_0"]] == [t for t, _ in runs["greedy"]]
    assert [e["weights"] for e in steps(runs, "add_scale_0")] != [e["weights"] for e in steps(runs, "add")]


def test_top_k_caps_the_support(runs):
    assert max(len(e["token_ids"]) for e in steps(runs, "top_k_2")) == 2
    assert max(len(e["token_ids"]) for e in steps(runs, "default")) > 2


def test_top_p_shrinks_the_support(runs):
    for narrow, wide in zip(first_steps(runs, "top_p_0.3"), first_steps(runs, "default")):
        assert set(narrow["token_ids"]) <= set(wide["token_ids"])
    assert sum(len(e["token_ids"]) for e in first_steps(runs, "top_p_0.3")) < sum(
        len(e["token_ids"]) for e in first_steps(runs, "default")
    )


def test_min_p_drops_weights_below_the_fraction_of_the_max(runs):
    for entry in steps(runs, "min_p_0.3"):
        assert min(entry["weights"]) >= 0.3 * max(entry["weights"]) - 1e-6
    assert any(min(e["weights"]) < 0.3 * max(e["weights"]) for e in steps(runs, "default"))


def test_temperature_sharpens_or_flattens(runs):
    for cold, hot in zip(first_steps(runs, "temperature_0.3"), first_steps(runs, "temperature_1.5")):
        assert cold["entropy"] < hot["entropy"]
        assert max(cold["weights"]) >= max(hot["weights"])


def test_emit_sample_departs_from_argmax(runs):
    sampled = steps(runs, "emit_sample")
    assert any(e["emitted"] != e["token_ids"][0] for e in sampled)
    assert all(e["emitted"] in e["token_ids"] for e in sampled)
    assert all(e["emitted"] == e["token_ids"][0] for e in steps(runs, "temperature_1.5_argmax"))


@pytest.mark.parametrize("variant", ["dirichlet_alpha_0.5", "dirichlet_alpha_1000", "gumbel_tau_0.1", "gumbel_tau_10"])
def test_noise_stays_on_the_support_sums_to_1_and_changes_weights(runs, variant):
    for noisy, clean in zip(first_steps(runs, variant), first_steps(runs, "default")):
        assert noisy["token_ids"] == clean["token_ids"]
        assert abs(sum(noisy["weights"]) - 1.0) < 1e-5
        assert min(noisy["weights"]) >= 0.0
        assert noisy["weights"] != pytest.approx(clean["weights"], abs=1e-6)


def _distance_to_clean(runs, variant):
    return statistics.mean(
        sum(abs(a - b) for a, b in zip(noisy["weights"], clean["weights"]))
        for noisy, clean in zip(first_steps(runs, variant), first_steps(runs, "default"))
    )


def test_alpha_sets_how_far_dirichlet_noise_moves_the_weights(runs):
    assert _distance_to_clean(runs, "dirichlet_alpha_1000") < _distance_to_clean(runs, "dirichlet_alpha_0.5")


def test_tau_sets_how_peaked_gumbel_weights_are(runs):
    def peak(variant):
        return statistics.mean(max(e["weights"]) for e in steps(runs, variant))

    assert peak("gumbel_tau_0.1") > 0.9
    assert peak("gumbel_tau_10") < peak("gumbel_tau_0.1")


def test_patience_delays_cold_stop(runs):
    ends = {}
    for variant in ("cold_patience_1", "cold_patience_3"):
        ends[variant] = [len(trace) for _, trace in runs[variant]]
        assert all(trace[-1]["end_reason"] == "cold_stop" for _, trace in runs[variant])
    assert all(a <= b - 2 for a, b in zip(ends["cold_patience_1"], ends["cold_patience_3"]))


def test_think_end_is_the_token_forced_when_thinking_ends(runs, default_tokenizer):
    think_end_id = default_tokenizer.convert_tokens_to_ids(THINK_END)
    for (tokens, trace), (plain_tokens, plain_trace) in zip(runs["budget_4_think_end"], runs["budget_4_no_think_end"]):
        assert len(trace) == len(plain_trace) == 4
        assert tokens[3] == think_end_id and trace[-1]["logprob"] is None
        assert plain_tokens[3] == plain_trace[-1]["emitted"] != think_end_id


def test_default_knobs_keep_thinking_through_all_steps(runs):
    assert all(len(trace) == STEPS and trace[-1]["end_reason"] is None for _, trace in runs["default"])
