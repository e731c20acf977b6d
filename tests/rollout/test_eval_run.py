"""The evaluation harness end to end on the tiny model: every output, and a resumed run
recomputes only what is missing, to the same table."""

import json

import pytest

from rollout.settings import EngineConfig, PoolConfig
from rollout.eval.cli import build_parser, run
from rollout.eval.benchmarks import resolve_benchmark
from rollout.eval.modes import resolve_modes
from rollout.eval.results import markdown
from rollout.eval.run import EvalPlan, evaluate

pytestmark = pytest.mark.slow

ARITH = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_resume_recomputes_only_missing_modes_to_the_same_table(ray_local, tiny_model_path, tmp_path):
    plan = EvalPlan(
        models=["tiny"], benchmarks=[resolve_benchmark("basic_arithmetic", ARITH, size=6)],
        modes=resolve_modes(["greedy", "sampling", "soft_gumbel"]), n=3, num_problems=6, max_tokens=12, seed=5,
        engine=EngineConfig(dtype="float32", max_model_len=512, kv_cache_gib=0.25, max_num_seqs=32, engine_core_process=False),
        pool=PoolConfig(num_workers=1, num_cpus_per_worker=1),
    )
    first = evaluate(plan, tmp_path)
    assert [c["n"] for c in first] == [1, 3, 3]  # greedy is deterministic: sampled once
    assert all(c["problems"] == 6 for c in first)
    assert first[2]["cold_stop_rate"] is not None  # soft modes report how thinking ended

    # Stopped after two modes: resume computes only the third, in a new pool, and the table
    # is the same (the seeded noisy soft mode draws the same samples again).
    results = tmp_path / "results.json"
    results.write_text(json.dumps(json.loads(results.read_text())[:2]))
    resumed = evaluate(plan, tmp_path, resume=True)
    assert [c["wall_s"] for c in resumed[:2]] == [c["wall_s"] for c in first[:2]]  # reused, not rerun
    assert markdown(resumed, wall_time=False) == markdown(first, wall_time=False)
    modes = [json.loads(line)["mode"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert modes == ["greedy"] * 6 + ["sampling"] * 18 + ["soft_gumbel"] * 18


def _gpqa_csv(path):
    import csv

    fields = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for i in range(4):
            writer.writerow(dict(zip(fields, [f"What is {i} + 1?", str(i + 1), str(i + 2), str(i + 3), str(i)])))
    return path


def test_command_writes_table_json_and_plot(ray_local, tiny_model_path, tmp_path):
    args = build_parser().parse_args([
        "--model", "untrained=tiny", "--bench", "basic_arithmetic", "--bench-args", f"basic_arithmetic={json.dumps(ARITH)}",
        "--bench", "gpqa_diamond", "--data", f"gpqa_diamond={_gpqa_csv(tmp_path / 'gpqa_diamond.csv')}",
        "--modes", "greedy", "scm_add", "--set", "scm_add.soft_thinking.scale=0.5", "--n", "2",
        "--num-problems", "4", "--max-tokens", "8", "--dtype", "float32", "--cpus-per-worker", "1", "--out", str(tmp_path),
    ])
    paths = run(args)
    cells = json.loads(paths["json"].read_text())
    assert [(c["model"], c["bench"], c["mode"]) for c in cells] == [
        ("untrained", bench, mode) for bench in ("basic_arithmetic", "gpqa_diamond") for mode in ("greedy", "scm_add")]
    assert "### Accuracy (pass@1, %)" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in paths["samples"].read_text().splitlines()]
    assert len(records) == 2 * (4 + 4)  # both modes deterministic: one sample per problem each
    gpqa = [r for r in records if r["bench"] == "gpqa_diamond"]
    assert {r["answer"] for r in gpqa} <= set("ABCD")  # scored on the letter of the right option
    for cell in cells:
        mode_records = [r for r in records if (r["bench"], r["mode"]) == (cell["bench"], cell["mode"])]
        assert sum(r["correct"] for r in mode_records) / len(mode_records) == pytest.approx(cell["pass@1"])
        assert sum(r["length"] for r in mode_records) / len(mode_records) == pytest.approx(cell["mean_length"])
