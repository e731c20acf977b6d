"""Soft GRPO arms on 1-digit, 2-term arithmetic: train each arm, then evaluate every
checkpoint against the untrained model on the same held-out problems, paired.

    .venv/bin/python benchmarks/soft_rl_arms.py [--arms grpo gaussian scm_s1 ...] [--num-problems 500]
    .venv/bin/python benchmarks/soft_rl_arms.py --task 2d2t --max-tokens 128 --arms grpo scm

``--task`` moves every arm (training prompts and held-out problems alike) to another
basic_arithmetic difficulty (``TASKS``), into runs/ and results/ folders of its own
(``soft_rl_arms_TASK``); ``--max-tokens`` sets the answer budget of both.

Arms (committed configs, same seed, budgets and prompts; ``--steps`` overrides all alike):
  grpo      configs/arith_grpo.yaml            token GRPO, the baseline
  concrete  configs/arith_soft.yaml            Gumbel tau 0.25, scored by its Concrete density
  token     configs/arith_soft_token.yaml      Gumbel tau 0.25 feeds back, the emitted token is the action
  multiplex configs/arith_soft_multiplex.yaml  4 draws fed back as their mixture
  gaussian  configs/arith_soft_gaussian.yaml   Gaussian noise (sigma 1.0 RMS) on the concept
  scm       configs/arith_scm.yaml             Soft Concept Mixing (add), token action
  gate      configs/arith_gate.yaml            HRPO's learned gate (mode gate), token action
  gate_fast configs/arith_gate_fast.yaml       the same, gate learning rates x100 (a 20-step run)

A run is an arm and a seed (the config's ``seed``: prompt order, sample streams, learner
init): ``scm`` is seed 0, ``scm_s1`` seed 1, and so on; ``--arms`` takes either. A run is
compared with token GRPO of the same seed; where an arm has several seeds ``arms.md`` adds
its gains per seed and their spread: one run per arm cannot tell a gap of a few points from
seed-to-seed noise.

Each arm trains in its own process (``trainer/run.py``, in-training evaluation off) into
``--runs``, all arms before any evaluation; an arm whose final checkpoint exists is not
trained again, and its metrics are copied into ``--out`` as soon as it has trained. Arms
named in ``--from-results`` (trained on an earlier machine; ``--runs`` is not kept between
machines) are reported from ``--out`` alone: their finished cells and kept metrics, even
where the checkpoint still exists; a cell they never got is logged and its part of the bar
reads "n/a". ``--modes`` restricts the decodings evaluated (for a quick look at a new seed). Then every model
(the base and each final checkpoint) is decoded greedily on ``--num-problems`` held-out
problems (seed 12345; training draws seed 0) in:
  greedy       plain token argmax
  soft         the arms' soft mode without noise: replace, temperature 0.7, argmax emission
  soft_sharp   the same at temperature 0.175 = 0.7 x tau 0.25: the sharpness of the
               mixtures the Gumbel arms fed back in training (noise-free)
  scm          add mode, scale 1, temperature 0.7 (only with the scm arm)
  gate         gate mode, top-k 50, temperature 0.7 (only with the gate arms; the base model
               and token GRPO have no gate file, so they get the seeded fresh gate)
  multiplex    multiplex decoding as the multiplex arm trained: 4 seeded draws fed back as
               their mixture, the first one emitted (only with the multiplex arm; a
               sample, not noise-free, so reported beside its own mode 'soft', not for the bar)
each in two prompt formats: ``train`` (the training instruction: <think>/<answer> tags) and
``neutral`` (the question, then "Give only the final number."; never used in training,
scored on the last number). Differences are paired per problem (same problems, same
decode), with standard errors. Outputs in ``--out``: arms.md (table and acceptance),
arms.json, arms.png, arms_lengths.png (accuracy against answer length), arms_training.png
(training curves; each arm's metrics beside it),
and per format and model the harness's cells and samples.
"""

import argparse
import dataclasses
import json
import logging
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "grpo": "configs/arith_grpo.yaml",
    "concrete": "configs/arith_soft.yaml",
    "token": "configs/arith_soft_token.yaml",
    "multiplex": "configs/arith_soft_multiplex.yaml",
    "gaussian": "configs/arith_soft_gaussian.yaml",
    "scm": "configs/arith_scm.yaml",
    "gate": "configs/arith_gate.yaml",
    "gate_fast": "configs/arith_gate_fast.yaml",
}
TASKS = {
    "1d2t": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
    "2d2t": {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2},
    "1d3t": {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1},
    "2d3t": {"min_terms": 3, "max_terms": 3, "min_digits": 2, "max_digits": 2},
}
"""basic_arithmetic settings by name: digits per operand (d) and terms (t). 1d2t is the
configs' own task (issue 16's); ``--task`` trains and evaluates every arm on another."""
DEFAULT_TASK = "1d2t"
EVAL_SEED = 12345
NEUTRAL_INSTRUCTION = "Give only the final number."
SOFT_TEMPERATURE = 0.7
SHARP_TEMPERATURE = 0.175
OWN_SOFT_MODE = {"concrete": "soft_sharp", "token": "soft_sharp", "multiplex": "soft", "gaussian": "soft", "scm": "scm",
                 "gate": "gate", "gate_fast": "gate"}
"""Each soft arm's own mode without noise: the training knobs at the sharpness they fed back."""
EXTRA_MODES = {"multiplex": ["multiplex"]}
"""Modes an arm (with the base model and token GRPO) is also decoded in, outside the bar."""
THRESHOLDS = {"own_gain": 0.10, "neutral_vs_grpo": 0.03, "greedy_gain_gap": 0.03}
"""Issue 16's learning bar: in its own soft mode an arm gains 10 points over the untrained
model (training format) and beats token GRPO by 3 points on the neutral prompt; its
plain-greedy gain is within 3 points of token GRPO's. The gate arms' bar (issue 17) is the
first part, a training reward no worse than token GRPO's within one SE (paired by step),
and a hidden share that rises."""

log = logging.getLogger("soft_rl_arms")


def run_label(arm: str, seed: int) -> str:
    """A run's name in --runs, --out and the tables: the arm for seed 0, ``arm_sN`` else."""
    return arm if seed == 0 else f"{arm}_s{seed}"


def arm_of(label: str) -> str:
    """The arm a run label belongs to (``scm_s1`` -> ``scm``; ``base`` stays)."""
    arm, _, seed = label.rpartition("_s")
    return arm if arm in ARMS and seed.isdigit() and seed == str(int(seed)) and int(seed) >= 1 else label


def seed_of(label: str) -> int:
    return 0 if arm_of(label) == label else int(label.rpartition("_s")[2])


def final_checkpoint(run_dir: Path, steps: int) -> Path:
    return run_dir / "checkpoints" / f"step_{steps:06d}" / "model"


def task_overrides(task: str, max_tokens: int | None, response_prefix: str = "") -> list[str]:
    """Config overrides (``key=value``) that move an arm from the configs' task to ``task``,
    with an answer budget of ``max_tokens`` (None: the config's) in training and evaluation,
    and the model's turn in the training format begun by ``response_prefix``."""
    overrides = [] if task == DEFAULT_TASK else [f"prompts.args={json.dumps(TASKS[task])}"]
    overrides += [f"format.response_prefix={json.dumps(response_prefix)}"] if response_prefix else []
    return overrides + ([f"algorithm.max_tokens={max_tokens}"] if max_tokens else [])


def results_folder(task: str, response_prefix: str) -> str:
    """soft_rl_arms, then _TASK for another task and _prefixed when the training format has a
    response prefix: each setting's runs and results apart."""
    return "soft_rl_arms" + ("" if task == DEFAULT_TASK else f"_{task}") + ("_prefixed" if response_prefix else "")


def train_arm(label: str, runs: Path, steps: int, overrides: list[str]) -> tuple[Path, float | None]:
    """The run's final checkpoint, training it first if missing (``overrides``: the task's,
    see ``task_overrides``); (path, training seconds)."""
    run_dir = runs / label
    checkpoint = final_checkpoint(run_dir, steps)
    if (checkpoint.parent / "COMPLETE").exists():
        log.info("%s: final checkpoint %s exists, not training", label, checkpoint)
        return checkpoint, None
    command = [sys.executable, "trainer/run.py", "--config", ARMS[arm_of(label)], f"output_dir={run_dir}",
               f"steps={steps}", f"checkpoint_every={steps}", "eval.num_prompts=0", f"seed={seed_of(label)}", *overrides]
    log.info("%s: training: %s", label, " ".join(command))
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    seconds = time.perf_counter() - start
    log.info("%s: trained %d steps in %.0f s", label, steps, seconds)
    return checkpoint, seconds


def eval_modes(names: list[str]):
    from rollout.eval.modes import EvalMode

    common = {"mode": "replace", "emit": "argmax", "noise": "none", "max_soft_steps": 64}
    modes = {
        "greedy": EvalMode("greedy", "Greedy", temperature=0.0),
        "soft": EvalMode("soft", "Soft T 0.7", temperature=0.0, soft_thinking={**common, "temperature": SOFT_TEMPERATURE}),
        "soft_sharp": EvalMode("soft_sharp", "Soft T 0.175", temperature=0.0,
                               soft_thinking={**common, "temperature": SHARP_TEMPERATURE}),
        "scm": EvalMode("scm", "SCM (add) T 0.7", temperature=0.0,
                        soft_thinking={**common, "mode": "add", "scale": 1.0, "temperature": SOFT_TEMPERATURE}),
        "multiplex": EvalMode("multiplex", "Multiplex 4 T 0.7", temperature=0.0,
                              soft_thinking={**common, "temperature": SOFT_TEMPERATURE, "multiplex": 4, "emit": "sample"}),
        "gate": EvalMode("gate", "HRPO gate T 0.7", temperature=0.0,
                         soft_thinking={**common, "mode": "gate", "temperature": SOFT_TEMPERATURE, "top_k": 50,
                                        "top_p": 1.0, "min_p": 0.0}),
    }
    return [modes[name] for name in names]


def modes_of(model: str, arms: list[str]) -> list[str]:
    """What each model (``base`` or a run label) is decoded in: greedy and the soft modes it
    is compared in. The base model and token GRPO, the references, in every soft mode of the
    arms run."""
    arm = arm_of(model)
    if arm in ("base", "grpo"):
        wanted = {mode for a in map(arm_of, arms) if a != "grpo" for mode in [OWN_SOFT_MODE[a], *EXTRA_MODES.get(a, [])]}
        return ["greedy", "soft"] + [m for m in ("soft_sharp", "scm", "gate", "multiplex") if m in wanted]
    own = [OWN_SOFT_MODE[arm]] if OWN_SOFT_MODE[arm] != "soft" else []
    return ["greedy", "soft"] + own + EXTRA_MODES.get(arm, [])


def evaluate_model(label: str, path: Path | str, modes: list[str], num_problems: int, out: Path,
                   overrides: list[str], report_only: bool = False) -> None:
    """The harness's cells for one model in ``modes``, in both formats, into
    ``out/FORMAT/LABEL`` (resumable: finished cells are kept), on the task and budget the
    arms trained with (``overrides``). ``report_only``, or a
    checkpoint that is gone, evaluates nothing new: only finished cells are reported."""
    from rollout.config import load_config
    from rollout.eval.benchmarks import resolve_benchmark
    from rollout.eval.run import EvalPlan, evaluate
    from rollout.prompts import PromptFormat
    from rollout.settings import PoolConfig
    from trainer.settings import TrainConfig
    from vllm_soft.models import resolve_model

    train = load_config(TrainConfig, REPO / ARMS["grpo"], overrides)
    bench = resolve_benchmark(train.prompts.name, train.prompts.args, seed=EVAL_SEED, size=num_problems)
    formats = {"train": train.format, "neutral": PromptFormat(instruction=NEUTRAL_INSTRUCTION)}
    for name, fmt in formats.items():
        wanted = modes
        if report_only or not Path(resolve_model(str(path))).exists():
            # trained on an earlier machine: only its finished cells can be reported
            wanted = [m for m in modes if m in finished_modes(out / name / label)]
            if wanted != modes:
                log.warning("%s: reported from its results (checkpoint %s); %s prompt cells %s not evaluated",
                            label, path, name, [m for m in modes if m not in wanted])
            if not wanted:
                continue
        plan = EvalPlan(models=[f"{label}={path}"], benchmarks=[bench], modes=eval_modes(wanted), n=1,
                        num_problems=num_problems, max_tokens=train.algorithm.max_tokens, seed=0, engine=train.engine,
                        pool=PoolConfig(num_workers=1, num_cpus_per_worker=2), format=fmt)
        evaluate(plan, out / name / label, resume=True)


def finished_modes(cell_dir: Path) -> set[str]:
    """The modes whose cells an earlier evaluation into ``cell_dir`` finished."""
    from rollout.eval.run import earlier_cells

    return {mode for _, _, mode in earlier_cells(cell_dir)}


def arm_metrics(runs: Path, out: Path, arm: str) -> list[dict]:
    """An arm's per-step training metrics: from its run folder, or where that is gone (an
    earlier machine) from the copy kept beside the results."""
    path = runs / arm / "metrics.jsonl"
    if not path.exists():
        path = out / f"{arm}_metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("step", 0) >= 1 and "reward_mean" in r]


def keep_metrics(runs: Path, out: Path, arm: str) -> None:
    """Copy an arm's training metrics beside the results as soon as it has trained: the
    run folder (checkpoints, gigabytes) stays on this machine."""
    rows = arm_metrics(runs, out, arm)
    (out / f"{arm}_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def eval_records(out: Path, formats=("train", "neutral"), pattern: str = "*/samples.jsonl",
                 column: str = "model") -> dict[tuple[str, str, str], list[dict]]:
    """(format, model, mode) -> the harness's per-problem records, in problem order, from
    ``out/FORMAT/PATTERN``; ``column`` names the record field in the key's middle (``bench``
    where one folder holds one model on several benchmarks)."""
    table: dict[tuple[str, str, str], dict[int, dict]] = {}
    for fmt in formats:
        for path in sorted((out / fmt).glob(pattern)):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                table.setdefault((fmt, record[column], record["mode"]), {})[record["problem"]] = record
    return {key: [by_problem[p] for p in sorted(by_problem)] for key, by_problem in table.items()}


def correctness(records: dict[tuple[str, str, str], list[dict]]) -> dict[tuple[str, str, str], list[bool]]:
    """(format, model, mode) -> per-problem correctness, in problem order."""
    return {key: [r["correct"] for r in rows] for key, rows in records.items()}


DIRECT_ANSWER_TOKENS = 16
"""An answer this short states the result with no worked steps ("(-6 / 2) = -3" is 10
tokens); the untrained model's answers run 50-77 tokens."""


def answer_shape(rows: list[dict]) -> dict:
    """How a cell answered: mean length and soft steps (tokens), the share of direct answers
    (at most DIRECT_ANSWER_TOKENS) and the accuracy of direct and of longer answers (None
    where there are none). It tells a policy that learned to reason from one that learned
    to skip reasoning, which accuracy alone does not."""
    direct = [r["correct"] for r in rows if r["length"] <= DIRECT_ANSWER_TOKENS]
    longer = [r["correct"] for r in rows if r["length"] > DIRECT_ANSWER_TOKENS]
    return {"mean_length": statistics.fmean(r["length"] for r in rows),
            "mean_soft_steps": statistics.fmean(r["soft_steps"] for r in rows),
            "direct_share": len(direct) / len(rows),
            "direct_accuracy": statistics.fmean(direct) if direct else None,
            "longer_accuracy": statistics.fmean(longer) if longer else None}


def paired(a: list[bool] | list[float], b: list[bool] | list[float]) -> tuple[float, float]:
    """Mean of a - b over the same problems (or steps), and its standard error."""
    if len(a) != len(b):
        raise ValueError(f"paired difference over different problem counts ({len(a)} vs {len(b)})")
    return mean_se([float(x) - float(y) for x, y in zip(a, b)])


def summarize(results: dict, arms: list[str], rewards: dict[str, list[float]],
              shares: dict[str, tuple[float, float]], shapes: dict | None = None) -> dict:
    """Accuracies, paired gains over the base model and over token GRPO of the same seed, and
    the bar per soft run (``arms``: run labels); ``rewards`` (per-step training rewards) and
    ``shares`` (first, last hidden share) from training; ``shapes``: (format, model, mode) ->
    ``answer_shape``, added to each row; ``seeds``: each arm's gains per seed where it has
    several."""
    rows, verdicts = [], {}
    for (fmt, model, mode), correct in sorted(results.items()):
        row = {"format": fmt, "model": model, "mode": mode, "n": len(correct), "accuracy": sum(correct) / len(correct),
               **(shapes or {}).get((fmt, model, mode), {})}
        if model != "base" and (fmt, "base", mode) in results:
            row["gain"], row["gain_se"] = paired(correct, results[fmt, "base", mode])
        reference = run_label("grpo", seed_of(model))
        if arm_of(model) not in ("base", "grpo") and (fmt, reference, mode) in results:
            row["vs_grpo"], row["vs_grpo_se"] = paired(correct, results[fmt, reference, mode])
        rows.append(row)
    by_key = {(r["format"], r["model"], r["mode"]): r for r in rows}
    for arm in arms:
        reference = run_label("grpo", seed_of(arm))
        if arm_of(arm) == "grpo" or reference not in arms:
            continue
        own = OWN_SOFT_MODE[arm_of(arm)]
        # a cell or metric can be absent where a gone checkpoint never got it: its part of the bar is unknown
        own_gain = by_key.get(("train", arm, own), {}).get("gain")
        neutral_vs_grpo = by_key.get(("neutral", arm, own), {}).get("vs_grpo")
        greedy, grpo_greedy = by_key.get(("train", arm, "greedy")), by_key.get(("train", reference, "greedy"))
        greedy_gap = greedy["gain"] - grpo_greedy["gain"] if greedy and grpo_greedy else None
        verdict = {"own_mode": own, "own_gain": own_gain, "neutral_vs_grpo": neutral_vs_grpo,
                   "greedy_gain_minus_grpo": greedy_gap}
        if own == "gate":  # issue 17: reward no worse than GRPO's within one SE, the hidden share rises
            checks = {"own_gain": at_least(own_gain, THRESHOLDS["own_gain"])}
            difference = reward_difference(rewards, arm, reference)
            verdict["reward_minus_grpo"] = difference
            checks["reward"] = None if difference is None else difference[0] >= -difference[1]
            verdict["hidden_share_first_last"] = shares.get(arm)
            checks["hidden_share_rises"] = shares[arm][1] > shares[arm][0] if arm in shares else None
        else:
            checks = soft_action_checks(own_gain, neutral_vs_grpo, greedy_gap)
        verdict["checks"] = checks
        verdict["passes"] = passes(checks)
        verdicts[arm] = verdict
    return {"rows": rows, "verdicts": verdicts, "thresholds": THRESHOLDS, "seeds": seed_spread(rows, arms),
            "bar_over_seeds": bar_over_seeds(verdicts)}


def soft_action_checks(own_gain: float | None, neutral_vs_grpo: float | None,
                       greedy_gap: float | None) -> dict[str, bool | None]:
    """Issue 16's bar for a soft action (None: the quantity was not measured); "within 3
    points of token GRPO's" read as no more than 3 points below it."""
    return {"own_gain": at_least(own_gain, THRESHOLDS["own_gain"]),
            "neutral_vs_grpo": at_least(neutral_vs_grpo, THRESHOLDS["neutral_vs_grpo"]),
            "greedy_gain": at_least(greedy_gap, -THRESHOLDS["greedy_gain_gap"])}


def at_least(x: float | None, floor: float) -> bool | None:
    return None if x is None else x >= floor


def passes(checks: dict[str, bool | None]) -> str:
    return "no" if False in checks.values() else "unknown" if None in checks.values() else "yes"


BAR_QUANTITIES = ("own_gain", "neutral_vs_grpo", "greedy_gain_minus_grpo")


def bar_over_seeds(verdicts: dict) -> list[dict]:
    """Per soft action judged in two or more seeds (each seed against token GRPO of that
    seed): each bar quantity per seed, its mean over the seeds with the SE across seeds,
    and the bar applied to the means. One seed cannot rank two arms whose seed-to-seed
    spread is larger than their difference; the mean over seeds can."""
    by_arm: dict[str, dict[int, dict]] = {}
    for label, verdict in verdicts.items():
        if verdict["own_mode"] != "gate":  # the gate's bar is issue 17's (reward, hidden share)
            by_arm.setdefault(arm_of(label), {})[seed_of(label)] = verdict
    result = []
    for arm, by_seed in sorted(by_arm.items()):
        if len(by_seed) < 2:
            continue
        entry = {"arm": arm, "seeds": sorted(by_seed)}
        means = {}
        for key in BAR_QUANTITIES:
            per_seed = {seed: by_seed[seed][key] for seed in sorted(by_seed)}
            measured = [x for x in per_seed.values() if x is not None]
            mean, se = mean_se(measured) if len(measured) == len(per_seed) else (None, None)
            entry[key] = {"per_seed": per_seed, "mean": mean, "se": se}
            means[key] = mean
        entry["checks"] = soft_action_checks(*(means[key] for key in BAR_QUANTITIES))
        entry["passes"] = passes(entry["checks"])
        result.append(entry)
    return result


def seed_spread(rows: list[dict], labels: list[str]) -> list[dict]:
    """Per (format, mode, arm) run with two or more seeds: each seed's gain over the base
    model, their mean and their standard deviation across seeds (the spread a single
    run's gain carries on top of its paired SE)."""
    gains: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in rows:
        if r["model"] in labels and "gain" in r:
            gains.setdefault((r["format"], r["mode"], arm_of(r["model"])), {})[seed_of(r["model"])] = r["gain"]
    spread = []
    for (fmt, mode, arm), by_seed in sorted(gains.items()):
        if len(by_seed) < 2:
            continue
        values = list(by_seed.values())
        spread.append({"format": fmt, "mode": mode, "arm": arm, "gains": dict(sorted(by_seed.items())),
                       "mean": statistics.fmean(values), "sd": statistics.stdev(values)})
    return spread


def pct(x: float | None, se: float | None = None) -> str:
    if x is None:
        return ""
    return f"{100 * x:+.1f} ± {100 * se:.1f}" if se is not None else f"{100 * x:.1f}"


def checks_text(checks: dict[str, bool | None]) -> str:
    return ", ".join(f"{name} {'n/a' if ok is None else 'ok' if ok else 'short'}" for name, ok in checks.items())


def share_change(drift: dict, rows: str) -> str:
    return (f"{drift[f'{rows}_share_fresh']:.4f} → {drift[f'{rows}_share_trained']:.4f} "
            f"({drift[f'{rows}_share_trained_lambda_only']:.4f}, {drift[f'{rows}_share_trained_layers_only']:.4f})")


def signed_points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def markdown(summary: dict, train_seconds: dict) -> str:
    lines = ["| format | mode | model | accuracy % | gain over base (pts) | vs token GRPO (pts) | mean tokens "
             f"(soft steps) | direct answers (≤ {DIRECT_ANSWER_TOKENS} tokens) % | accuracy %: direct / longer |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(summary["rows"], key=lambda r: (r["format"] != "train", r["mode"], r["model"] != "base", r["model"])):
        shape = (f"{r['mean_length']:.1f} ({r['mean_soft_steps']:.1f}) | {pct(r['direct_share'])} | "
                 f"{pct(r['direct_accuracy']) or '-'} / {pct(r['longer_accuracy']) or '-'}") if "mean_length" in r else " | | "
        lines.append(f"| {r['format']} | {r['mode']} | {r['model']} | {pct(r['accuracy'])} | "
                     f"{pct(r.get('gain'), r.get('gain_se'))} | {pct(r.get('vs_grpo'), r.get('vs_grpo_se'))} | {shape} |")
    lines += ["", "| arm | own soft mode | gain, own mode, train format | vs GRPO, own mode, neutral | "
              "greedy gain minus GRPO's | bar met | training s |", "|---|---|---:|---:|---:|---|---:|"]
    for arm, v in summary["verdicts"].items():
        lines.append(f"| {arm} | {v['own_mode']} | {signed_points(v['own_gain'])} | {signed_points(v['neutral_vs_grpo'])} | "
                     f"{signed_points(v['greedy_gain_minus_grpo'])} | {v['passes']} ({checks_text(v['checks'])}) | "
                     f"{train_seconds.get(arm, '')} |")
    lines += ["", "| arm | mean training reward (± SE over steps) | minus token GRPO's, paired by step (same "
              "seed: same prompts) | hidden share, first → last step |", "|---|---:|---:|---:|"]
    rewards = summary.get("training_reward", {})
    for arm, values in rewards.items():
        mean, se = mean_se(values)
        difference = reward_difference(rewards, arm, run_label("grpo", seed_of(arm)))
        share = summary.get("hidden_share", {}).get(arm)
        lines.append(f"| {arm} | {mean:.3f} ± {se:.3f} | {f'{difference[0]:+.3f} ± {difference[1]:.3f}' if difference else ''} | "
                     f"{f'{share[0]:.6f} → {share[1]:.6f}' if share else ''} |")
    if summary.get("seeds"):
        lines += ["", "| format | mode | arm | gain over base per seed (pts) | mean | SD across seeds |",
                  "|---|---|---|---|---:|---:|"]
        for s in summary["seeds"]:
            per_seed = ", ".join(f"s{seed} {100 * g:+.1f}" for seed, g in s["gains"].items())
            lines.append(f"| {s['format']} | {s['mode']} | {s['arm']} | {per_seed} | {100 * s['mean']:+.1f} | "
                         f"{100 * s['sd']:.1f} |")
    if summary.get("bar_over_seeds"):
        lines += ["", "| arm (seeds) | gain, own mode, train format: per seed; mean ± SE across seeds | "
                  "vs GRPO of the same seed, own mode, neutral | greedy gain minus GRPO's | bar met on the means |",
                  "|---|---|---|---|---|"]
        for entry in summary["bar_over_seeds"]:
            cells_ = []
            for key in BAR_QUANTITIES:
                q = entry[key]
                per_seed = ", ".join(f"s{seed} {signed_points(x)}" for seed, x in q["per_seed"].items())
                cells_.append(f"{per_seed}; {pct(q['mean'], q['se']) or 'n/a'}")
            seeds = ", ".join(str(seed) for seed in entry["seeds"])
            lines.append(f"| {entry['arm']} ({seeds}) | {' | '.join(cells_)} | {entry['passes']} "
                         f"({checks_text(entry['checks'])}) |")
    if summary.get("gate_drift"):
        lines += ["", "| gate arm | retention Λ: mean change | mean abs change | share of dimensions lowered (opened) | "
                  "W_r relative change | W_i relative change | hidden share, fresh → trained (Λ alone, layers alone): "
                  "random vocabulary | its answers' tokens |", "|---|---:|---:|---:|---:|---:|---|---|"]
        for arm, d in summary["gate_drift"].items():
            lines.append(f"| {arm} | {d['lambda_mean_change']:+.4f} | {d['lambda_mean_abs_change']:.4f} | "
                         f"{d['lambda_fraction_lowered']:.3f} | {d['weight_r_relative_change']:.4f} | "
                         f"{d['weight_i_relative_change']:.4f} | {share_change(d, 'vocab')} | {share_change(d, 'emitted')} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    models = sorted({r["model"] for r in rows}, key=lambda m: (m != "base", m != "grpo", m))
    panels = sorted({(r["format"], r["mode"]) for r in rows}, key=lambda p: (p[0] != "train", p[1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), sharey=True)
    for ax, (fmt, mode) in zip(axes, panels):
        cell = {r["model"]: r for r in rows if r["format"] == fmt and r["mode"] == mode}
        accs = [100 * cell[m]["accuracy"] if m in cell else 0.0 for m in models]
        errs = [100 * math.sqrt(a / 100 * (1 - a / 100) / cell[m]["n"]) if m in cell else 0.0
                for m, a in zip(models, accs)]
        ax.bar(range(len(models)), accs, yerr=errs, color=[f"C{i}" for i in range(len(models))], capsize=2)
        ax.set_xticks(range(len(models)), models, rotation=60, fontsize=7)
        ax.set_title(f"{fmt} prompt, {mode}", fontsize=8)
    axes[0].set_ylabel("held-out accuracy % (± binomial SE)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def training_rewards(runs: Path, out: Path, arms: list[str]) -> dict[str, list[float]]:
    """Each trained run's batch reward per step."""
    rewards = {arm: [r["reward_mean"] for r in arm_metrics(runs, out, arm)] for arm in arms}
    return {arm: values for arm, values in rewards.items() if len(values) > 1}


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (each value, a problem or a step, as the unit; 0 for one)."""
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def reward_difference(rewards: dict[str, list[float]], arm: str, reference: str) -> tuple[float, float] | None:
    """The run's training reward minus the reference's, paired by step over the steps both
    ran: runs of one seed draw the same prompts at each step, and the prompts' difficulty,
    not the arm, moves most of a step's reward (every arm's best steps are the same), so
    the paired SE is about half the unpaired one."""
    if arm == reference or arm not in rewards or reference not in rewards:
        return None
    steps = min(len(rewards[arm]), len(rewards[reference]))
    return paired(rewards[arm][:steps], rewards[reference][:steps]) if steps > 1 else None


def hidden_shares(runs: Path, out: Path, arms: list[str]) -> dict[str, tuple[float, float]]:
    """Each gate arm's hidden share (mean sqrt(1 - a^2)) at its first and last step."""
    shares = {}
    for arm in arms:
        values = [r["hidden_share"] for r in arm_metrics(runs, out, arm) if r.get("hidden_share") is not None]
        if values:
            shares[arm] = (values[0], values[-1])
    return shares


def gate_drift(checkpoint: Path, responses: list[str], num_rows: int = 8192) -> dict:
    """How far a gate arm's trained gate moved from the fresh one it started from: the
    retention Λ per dimension (a lower Λ opens the gate: a larger hidden share), the gate
    layers' weights, and the hidden share with each part trained or fresh, over ``num_rows``
    random vocabulary rows and over the tokens of ``responses`` (its own gate-mode answers).
    Tells a directed move from a random walk, and a general opening from one on the tokens
    the task emits."""
    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from vllm_soft.gate import fresh_gate, load_gate
    from vllm_soft.soft_math import gate_retention

    hidden_size = json.loads((checkpoint / "config.json").read_text())["hidden_size"]
    trained, settings, fresh = load_gate(checkpoint, hidden_size)
    if fresh:
        raise ValueError(f"{checkpoint} has no trained gate")
    start = fresh_gate(hidden_size, settings)  # the gate training started from (the base model has none)
    delta = trained.lambda_H.double() - start.lambda_H.double()
    table = None
    for path in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            name = next((k for k in weights.keys() if k.endswith("embed_tokens.weight")), None)
            table = weights.get_tensor(name).float() if name else table
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    emitted = torch.tensor([t for text in responses for t in tokenizer(text, add_special_tokens=False).input_ids])
    row_sets = {"vocab": table[torch.randperm(table.shape[0], generator=torch.Generator().manual_seed(0))[:num_rows]],
                "emitted": table[emitted]}
    gates = {"fresh": start, "trained": trained, "trained_lambda_only": dataclasses.replace(start, lambda_H=trained.lambda_H),
             "trained_layers_only": dataclasses.replace(trained, lambda_H=start.lambda_H)}

    def share(rows, gate) -> float:
        a = gate_retention(rows, gate)[0].double()
        return (1.0 - a * a).clamp_min(0.0).sqrt().mean().item()

    drift = {"lambda_mean_change": delta.mean().item(), "lambda_mean_abs_change": delta.abs().mean().item(),
             "lambda_fraction_lowered": (delta < 0).double().mean().item(),
             "weight_r_relative_change": ((trained.weight_r_HH - start.weight_r_HH).norm() / start.weight_r_HH.norm()).item(),
             "weight_i_relative_change": ((trained.weight_i_HH - start.weight_i_HH).norm() / start.weight_i_HH.norm()).item(),
             "emitted_tokens": len(emitted)}
    for rows_name, rows in row_sets.items():
        for gate_name, gate in gates.items():
            drift[f"{rows_name}_share_{gate_name}"] = share(rows, gate)
    return drift


def gate_mode_responses(out: Path, arm: str) -> list[str]:
    """The arm's gate-mode answers to the training-format problems."""
    lines = (out / "train" / arm / "samples.jsonl").read_text().splitlines()
    return [r["response"] for r in map(json.loads, lines) if r["mode"] == "gate"]


def plot_lengths(summary: dict, path: Path) -> None:
    """Held-out accuracy against mean answer length, one point per model and decoding, per
    prompt format: a policy that skips reasoning sits left, one that reasons in soft steps
    right, at whatever accuracy each reaches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if "mean_length" in r]
    models = sorted({r["model"] for r in rows}, key=lambda m: (m != "base", m != "grpo", m))
    markers = dict(zip(sorted({r["mode"] for r in rows}), "os^vDPX*"))
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2), sharey=True)
    for ax, fmt in zip(axes, ("train", "neutral")):
        for r in rows:
            if r["format"] == fmt:
                ax.scatter(r["mean_length"], 100 * r["accuracy"], color=plt.cm.tab20(models.index(r["model"]) % 20),
                           marker=markers[r["mode"]], s=30)
        ax.set_title(f"{fmt} prompt", fontsize=9)
        ax.set_xlabel("mean answer length (tokens)")
    axes[0].set_ylabel("held-out accuracy %")
    handles = [plt.Line2D([], [], color=plt.cm.tab20(i % 20), marker="o", linestyle="", label=m)
               for i, m in enumerate(models)]
    handles += [plt.Line2D([], [], color="gray", marker=k, linestyle="", label=mode) for mode, k in markers.items()]
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.legend(handles=handles, fontsize=7, loc="center right")
    fig.savefig(path, dpi=120)


def plot_training(runs: Path, arms: list[str], out: Path) -> None:
    """Each arm's training curves: reward; for soft arms the soft-step log-prob gap; for the
    gate arms the hidden share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for arm in arms:
        rows = arm_metrics(runs, out, arm)
        if not rows:
            continue
        axes[0].plot([r["step"] for r in rows], [r["reward_mean"] for r in rows], label=arm)
        gaps = [(r["step"], r["logprob_gap_soft"]) for r in rows if r.get("logprob_gap_soft") is not None]
        if gaps:
            axes[1].plot(*zip(*gaps), label=arm)
        shares = [(r["step"], r["hidden_share"]) for r in rows if r.get("hidden_share") is not None]
        if shares:
            axes[2].plot(*zip(*shares), label=arm)
    axes[0].set(xlabel="step", ylabel="mean reward (64 samples)")
    axes[1].set(xlabel="step", ylabel="soft-step |learner - rollout| log-prob")
    axes[2].set(xlabel="step", ylabel="HRPO hidden share, mean sqrt(1 - a^2)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "arms_training.png", dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), metavar="RUN",
                        help=f"runs: an arm ({', '.join(ARMS)}) for seed 0, ARM_sN for seed N")
    parser.add_argument("--modes", nargs="+", choices=["greedy", "soft", "soft_sharp", "scm", "multiplex", "gate"],
                        help="evaluate only these decodings (default: every one the arms are compared in)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-problems", type=int, default=500)
    parser.add_argument("--task", default=DEFAULT_TASK, choices=list(TASKS),
                        help="basic_arithmetic difficulty (digits d, terms t) every arm trains and is evaluated on")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="answer budget in training and evaluation (default: the configs', 96)")
    parser.add_argument("--response-prefix", default="",
                        help="text the model's turn starts with in the training format (training and its "
                             "evaluation; the neutral prompt has none), e.g. 'To calculate' to keep a policy "
                             "from answering at once")
    parser.add_argument("--runs", type=Path, default=None, help="default: runs/soft_rl_arms[_TASK][_prefixed]")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/soft_rl_arms[_TASK][_prefixed]")
    parser.add_argument("--skip-training", action="store_true", help="evaluate the arms' existing checkpoints only")
    parser.add_argument("--from-results", nargs="*", default=[], metavar="RUN",
                        help="runs (ARM or ARM_sN) reported from --out alone (trained on an earlier machine): "
                             "not trained or evaluated again; only their finished cells count")
    args = parser.parse_args(argv)
    labels = args.arms
    unknown = [label for label in labels if arm_of(label) not in ARMS]
    if unknown:
        parser.error(f"--arms {unknown}: a run is an arm ({', '.join(ARMS)}) or ARM_sN with a seed N >= 1")
    if not set(args.from_results) <= set(labels):
        parser.error(f"--from-results {sorted(set(args.from_results) - set(labels))}: not among --arms")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    folder = results_folder(args.task, args.response_prefix)
    args.runs = args.runs or REPO / "runs" / folder
    args.out = args.out or REPO / "benchmarks" / "results" / folder
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = task_overrides(args.task, args.max_tokens, args.response_prefix)

    seconds_path = args.out / "train_seconds.json"
    train_seconds = json.loads(seconds_path.read_text()) if seconds_path.exists() else {}
    # Every arm trains first (the timed part, alone on the machine), then every model is
    # evaluated; a stopped run keeps its trained arms and its finished cells.
    checkpoints = {}
    for label in labels:
        if args.skip_training or label in args.from_results:
            checkpoints[label] = final_checkpoint(args.runs / label, args.steps)
            continue
        checkpoints[label], seconds = train_arm(label, args.runs, args.steps, overrides)
        if seconds is not None:
            train_seconds[label] = round(seconds)
            seconds_path.write_text(json.dumps(train_seconds, indent=1))
            keep_metrics(args.runs, args.out, label)

    def modes(model: str) -> list[str]:
        return [m for m in modes_of(model, labels) if args.modes is None or m in args.modes]

    evaluate_model("base", "smollm2-135m", modes("base"), args.num_problems, args.out, overrides)
    for label, checkpoint in checkpoints.items():
        evaluate_model(label, checkpoint, modes(label), args.num_problems, args.out, overrides,
                       report_only=label in args.from_results)
        if OWN_SOFT_MODE.get(arm_of(label)) == "gate" and checkpoint.exists() and label not in args.from_results:
            drift = gate_drift(checkpoint, gate_mode_responses(args.out, label))
            (args.out / f"{label}_gate_drift.json").write_text(json.dumps(drift, indent=1) + "\n")

    rewards, shares = training_rewards(args.runs, args.out, labels), hidden_shares(args.runs, args.out, labels)
    records = eval_records(args.out)
    shapes = {key: answer_shape(rows) for key, rows in records.items()}
    summary = summarize(correctness(records), labels, rewards, shares, shapes)
    drifts = {label: json.loads((args.out / f"{label}_gate_drift.json").read_text()) for label in labels
              if (args.out / f"{label}_gate_drift.json").exists()}
    summary.update(train_seconds=train_seconds, training_reward=rewards, hidden_share=shares, gate_drift=drifts)
    (args.out / "arms.json").write_text(json.dumps(summary, indent=1))
    table = markdown(summary, train_seconds)
    (args.out / "arms.md").write_text(table)
    plot(summary, args.out / "arms.png")
    plot_lengths(summary, args.out / "arms_lengths.png")
    plot_training(args.runs, labels, args.out)
    print(table)


if __name__ == "__main__":
    main()
