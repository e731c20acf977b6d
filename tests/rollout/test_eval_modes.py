"""Evaluation modes: the six of the issue and the gate and Coconut modes, knob overrides,
and errors that name the problem."""

import pytest

from rollout.eval.modes import MODES, resolve_modes


def test_the_modes_and_which_are_deterministic():
    assert list(MODES) == [
        "sampling", "greedy", "soft", "soft_dirichlet", "soft_gumbel", "scm_add", "hrpo_gate", "coconut"]
    assert [m.deterministic for m in MODES.values()] == [False, True, True, False, False, True, True, True]
    assert MODES["scm_add"].soft_thinking["mode"] == "add"
    assert MODES["hrpo_gate"].soft_thinking["mode"] == "gate" and MODES["coconut"].soft_thinking["mode"] == "hidden"


def test_overrides_apply_to_a_copy():
    (gumbel, sampling) = resolve_modes(
        ["soft_gumbel", "sampling"], {"soft_gumbel": {"soft_thinking.tau": 0.25}, "sampling": {"temperature": 1.0}}
    )
    assert gumbel.soft_thinking == {"noise": "gumbel", "tau": 0.25}
    assert sampling.temperature == 1.0
    assert MODES["soft_gumbel"].soft_thinking["tau"] == 0.5 and MODES["sampling"].temperature == 0.6


@pytest.mark.parametrize("names, overrides, message", [
    (["beam"], {}, "unknown mode"),
    (["greedy"], {"soft": {}}, "not evaluated"),
    (["greedy"], {"greedy": {"soft_thinking.tau": 1.0}}, "decodes plain tokens"),
    (["soft"], {"soft": {"top_k_tokens": 3}}, "unknown knob"),
    (["soft"], {"soft": {"soft_thinking.noise": "laplace"}}, "noise"),
])
def test_bad_modes_and_knobs_are_named(names, overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve_modes(names, overrides)


def test_model_labels():
    from rollout.eval.run import model_label

    assert model_label("smollm2-135m") == ("smollm2-135m", "smollm2-135m")
    assert model_label("trained=/x/y") == ("trained", "/x/y")
    assert model_label("runs/arith/checkpoints/step_000020/model") == (
        "arith/step_000020", "runs/arith/checkpoints/step_000020/model")
    with pytest.raises(ValueError, match="LABEL=PATH"):
        model_label("=/x/y")


def test_gpqa_diamond_reads_its_published_csv(tmp_path):
    import csv

    from rollout.prompts import load_prompts
    from rollout.eval.benchmarks import resolve_benchmark

    path = tmp_path / "gpqa_diamond.csv"
    fields = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["Record ID", *fields])
        writer.writeheader()
        writer.writerow({"Record ID": "r1", "Question": "Q?", "Correct Answer": "yes", "Incorrect Answer 1": "no",
                         "Incorrect Answer 2": "maybe", "Incorrect Answer 3": "never"})
    bench = resolve_benchmark("gpqa_diamond", data=str(path), seed=3)
    assert bench.correct_term == "choice"
    (item,) = load_prompts(bench.source)
    assert f"{item.answer}) yes" in item.question
    with pytest.raises(ValueError, match="args are for reasoning-gym tasks"):
        resolve_benchmark("gpqa_diamond", args={"x": 1})


@pytest.mark.parametrize("name, row, response", [
    ("gsm8k", {"question": "Tom has 40 and gets 2. How many?", "answer": "40 + 2 = 42\n#### 42"}, "<answer>42</answer>"),
    ("math500", {"problem": "Simplify 2/4.", "answer": "\\frac{1}{2}", "subject": "Algebra"}, "<answer>0.5</answer>"),
    ("aime2024", {"problem": "Find n.", "answer": "204", "id": 60}, "so \\boxed{204}"),
])
def test_hub_benchmarks_read_local_copies_in_their_published_format(tmp_path, name, row, response):
    import json

    from rollout.prompts import load_prompts
    from rollout.rewards import CHECKS
    from rollout.eval.benchmarks import resolve_benchmark

    path = tmp_path / f"{name}.jsonl"
    path.write_text(json.dumps(row) + "\n")
    bench = resolve_benchmark(name, data=str(path))
    (item,) = load_prompts(bench.source)
    assert item.question == row.get("question", row.get("problem"))
    check = CHECKS[bench.correct_term]
    assert check(response, item.answer, item.entry) == 1.0
    assert check("<answer>7</answer>", item.answer, item.entry) == 0.0
