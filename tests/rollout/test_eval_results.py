"""Table cells from samples, by hand; the Markdown layout; the plot file."""

import dataclasses

import pytest

from rollout.sample import Sample
from rollout.eval.results import markdown, plot, summarize_mode


def _sample(group: int, index: int, right: bool, length: int, cold_stop: bool | None = None) -> Sample:
    steps = [] if cold_stop is None else [
        {"position": 0, "token_ids": [7], "weights": [1.0], "log_weights": [0.0], "end_reason": "cold_stop" if cold_stop else "think_end"}
    ]
    return Sample(group_id=group, sample_index=index, prompt="p", prompt_token_ids=[1], response_token_ids=[7] * length,
                  response_text="", rollout_logprobs=[0.0] * length, finish_reason="stop", soft_steps=steps,
                  reward_parts={"correct": 1.0 if right else 0.0})


def test_summarize_mode_by_hand():
    groups = [
        [_sample(0, 0, True, 10, True), _sample(0, 1, False, 20, False)],
        [_sample(1, 0, False, 30, True), _sample(1, 1, False, 40, None)],
    ]
    cell = summarize_mode(groups, seconds=12.0)
    assert cell["n"] == 2 and cell["problems"] == 2
    assert cell["pass@1"] == pytest.approx(0.25)  # per problem 0.5 and 0
    assert cell["pass@1_stderr"] == pytest.approx(0.25)  # sd of (0.5, 0) = 0.3536, / sqrt(2)
    assert cell["pass@k"] == {1: pytest.approx(0.25), 2: pytest.approx(0.5)}
    assert cell["mean_length"] == 25 and cell["mean_length_correct"] == 10
    assert cell["cold_stop_rate"] == pytest.approx(2 / 3)  # of the 3 samples that thought softly
    with pytest.raises(ValueError, match="same number of samples"):
        summarize_mode([groups[0], groups[1][:1]], 1.0)


def test_markdown_accuracy_block_then_length_block_then_details(tmp_path):
    groups = [[_sample(0, 0, True, 10), _sample(0, 1, True, 20)]]
    cells = [{"model": m, "bench": b, "mode": "greedy", "label": "Greedy", **summarize_mode(groups, 1.0)}
             for m in ("base", "trained") for b in ("arith", "gsm")]
    text = markdown(cells)
    lines = text.splitlines()
    accuracy, length = lines.index("### Accuracy (pass@1, %)"), lines.index("### Generation length (tokens, all samples)")
    assert accuracy < length < lines.index("### arith") < lines.index("### gsm")
    assert lines[accuracy + 2] == "| model | mode | arith | gsm | avg |"
    assert "| base | Greedy | 100.0 | 100.0 | 100.0 |" in lines and "| trained | Greedy | 15 | 15 | 15 |" in lines
    plot(cells, tmp_path / "bars.png")
    assert (tmp_path / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_combine_runs_into_one_table(tmp_path):
    import json

    from rollout.eval.combine import combine, main

    cell = summarize_mode([[_sample(0, 0, True, 10)]], 1.0)
    arith = [{"model": m, "bench": "arith", "mode": "greedy", "label": "Greedy", **cell} for m in ("base", "ckpt")]
    gsm = [{"model": "base", "bench": "gsm", "mode": "greedy", "label": "Greedy", **cell}]
    combined = combine([arith, gsm], {"base": "untrained"})
    assert [(c["model"], c["bench"]) for c in combined] == [("untrained", "arith"), ("ckpt", "arith"), ("untrained", "gsm")]
    assert "| ckpt | Greedy | 100.0 | - | - |" in markdown(combined)  # no gsm cell: a dash, no average
    with pytest.raises(ValueError, match="'base', bench 'arith', mode 'greedy' is in run 0 and run 1"):
        combine([arith, arith])

    paths = []
    for name, cells in (("a", arith), ("b", gsm)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(cells))  # as results.json stores them (pass@k keys become strings)
    main([*map(str, paths), "--rename", "base=untrained", "--out", str(tmp_path / "all")])
    assert "| untrained | Greedy | 100.0 | 100.0 | 100.0 |" in (tmp_path / "all" / "results.md").read_text()
    assert len(json.loads((tmp_path / "all" / "results.json").read_text())) == 3


def test_resume_reuses_cells_made_with_the_same_settings_only(tmp_path):
    import json

    import ray

    from rollout.eval.benchmarks import resolve_benchmark
    from rollout.eval.modes import resolve_modes
    from rollout.eval.run import EvalPlan, cell_settings, evaluate
    from rollout.prompts import PromptFormat

    bench = resolve_benchmark("basic_arithmetic", {"min_terms": 2, "max_terms": 2}, size=4)
    plan = EvalPlan(models=["base=tiny"], benchmarks=[bench], modes=resolve_modes(["greedy", "sampling"]),
                    n=2, num_problems=4, max_tokens=8)
    cells = [{"model": "base", "bench": "basic_arithmetic", "mode": mode.name, "label": mode.label,
              **summarize_mode([[_sample(0, 0, True, 10)]], 1.0), "settings": cell_settings(plan, "tiny", bench, mode)}
             for mode in plan.modes]
    # a finished cell this plan does not name (another model's): resuming must keep it
    other = {**cells[0], "model": "trained"}
    (tmp_path / "results.json").write_text(json.dumps([*cells, other]))
    (tmp_path / "samples.jsonl").write_text(
        "".join(json.dumps({"model": model, "bench": "basic_arithmetic", "mode": m}) + "\n"
                for model, m in (("base", "greedy"), ("trained", "greedy"), ("base", "sampling"),
                                 ("base", "soft"))))  # "soft": a mode that never finished

    again = evaluate(plan, tmp_path, resume=True)  # every cell finished: no engine starts
    assert [c["mode"] for c in again] == ["greedy", "sampling"] and not ray.is_initialized()
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(s["model"], s["mode"]) for s in samples] == [("base", "greedy"), ("trained", "greedy"),
                                                          ("base", "sampling")]
    stored = json.loads((tmp_path / "results.json").read_text())
    assert [(c["model"], c["mode"]) for c in stored] == [("base", "greedy"), ("base", "sampling"), ("trained", "greedy")]
    assert (tmp_path / "results.md").exists()

    # cells made before PromptFormat and PromptSourceConfig had a field (response_prefix,
    # split) were made with its default
    for cell in stored:
        del cell["settings"]["format"]["response_prefix"]
        del cell["settings"]["source"]["split"]
    (tmp_path / "results.json").write_text(json.dumps(stored))
    assert len(evaluate(plan, tmp_path, resume=True)) == 2 and not ray.is_initialized()
    prefixed = dataclasses.replace(plan, format=PromptFormat(response_prefix="The answer is"))
    with pytest.raises(ValueError, match=r"greedy was made with other \['format'\]"):
        evaluate(prefixed, tmp_path, resume=True)
    other_split = dataclasses.replace(plan, benchmarks=[dataclasses.replace(
        bench, source=dataclasses.replace(bench.source, split="test"))])
    with pytest.raises(ValueError, match=r"greedy was made with other \['source'\]"):
        evaluate(other_split, tmp_path, resume=True)

    longer = EvalPlan(models=["base=tiny"], benchmarks=[bench], modes=plan.modes, n=2, num_problems=4, max_tokens=16)
    with pytest.raises(ValueError, match=r"base \| basic_arithmetic \| greedy was made with other \['max_tokens'\]"):
        evaluate(longer, tmp_path, resume=True)
