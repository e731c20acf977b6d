"""The evaluation harness end to end on the tiny model, through its command: every output,
and a resumed run recomputes only what is missing, to the same table."""

import json

import pytest

from rollout.eval.cli import build_parser, run
from rollout.eval.results import markdown

pytestmark = pytest.mark.slow

ARITH = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _gpqa_csv(path):
    import csv

    fields = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for i in range(4):
            writer.writerow(dict(zip(fields, [f"What is {i} + 1?", str(i + 1), str(i + 2), str(i + 3), str(i)])))
    return path


def test_command_writes_table_json_and_plot_and_a_resumed_run_recomputes_only_missing_cells(
    ray_local, tiny_model_path, tmp_path
):
    argv = [
        "--model", "untrained=tiny", "--bench", "basic_arithmetic", "--bench-args", f"basic_arithmetic={json.dumps(ARITH)}",
        "--bench", "gpqa_diamond", "--data", f"gpqa_diamond={_gpqa_csv(tmp_path / 'gpqa_diamond.csv')}",
        "--modes", "greedy", "scm_add", "soft_gumbel", "hrpo_gate", "coconut",
        "--set", "scm_add.soft_thinking.scale=0.5", "--n", "2",
        "--num-problems", "4", "--max-tokens", "8", "--dtype", "float32", "--cpus-per-worker", "1", "--out", str(tmp_path),
        "--no-engine-core-process",
    ]
    paths = run(build_parser().parse_args(argv))
    cells = json.loads(paths["json"].read_text())
    modes = ("greedy", "scm_add", "soft_gumbel", "hrpo_gate", "coconut")
    assert [(c["model"], c["bench"], c["mode"]) for c in cells] == [
        ("untrained", bench, mode) for bench in ("basic_arithmetic", "gpqa_diamond") for mode in modes]
    assert [c["n"] for c in cells] == [1, 1, 2, 1, 1] * 2  # deterministic modes are sampled once
    assert all(c["problems"] == 4 for c in cells)
    assert cells[2]["cold_stop_rate"] is not None  # soft modes report how thinking ended
    assert "### Accuracy (pass@1, %)" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in paths["samples"].read_text().splitlines()]
    assert len(records) == 2 * (4 + 4 + 8 + 4 + 4)
    gpqa = [r for r in records if r["bench"] == "gpqa_diamond"]
    assert {r["answer"] for r in gpqa} <= set("ABCD")  # scored on the letter of the right option

    # Stopped after four cells: resume computes only the last six, in a new pool, and the
    # table is the same (the seeded noisy soft mode draws the same samples again).
    paths["json"].write_text(json.dumps(cells[:4]))
    resumed_paths = run(build_parser().parse_args([*argv, "--resume"]))
    resumed = json.loads(resumed_paths["json"].read_text())
    assert [c["wall_s"] for c in resumed[:4]] == [c["wall_s"] for c in cells[:4]]  # reused, not rerun
    assert markdown(resumed, wall_time=False) == markdown(cells, wall_time=False)
    order = [(r["bench"], r["mode"]) for r in map(json.loads, resumed_paths["samples"].read_text().splitlines())]
    assert order == [(r["bench"], r["mode"]) for r in records]
