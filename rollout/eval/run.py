"""Run an evaluation: every model x benchmark x mode through a rollout pool, then the outputs.

One pool (vLLM engines on Ray) per model, started only if a cell of it is missing, scoring
each benchmark with its own answer check; each mode samples n answers per
problem (deterministic modes, greedy and noise-free soft thinking, one: every sample would be
the same). Sample i of problem g draws the stream of seed + g n + i, so a fixed seed gives
the same table.
"""

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rollout.prompts import PromptFormat, format_prompt, load_prompts
from rollout.settings import EngineConfig, PoolConfig, SamplingConfig
from rollout.eval.benchmarks import Benchmark
from rollout.eval.modes import EvalMode
from rollout.eval.results import markdown, plot, summarize_mode
from rollout.summary import is_correct
from vllm_soft.runtime import resolve_dtype

log = logging.getLogger(__name__)


@dataclass
class EvalPlan:
    models: list[str]
    """Named models or Hugging Face folders; ``LABEL=PATH`` names a row of the table."""
    benchmarks: list[Benchmark]
    modes: list[EvalMode]
    n: int = 4
    """Samples per problem for the modes that sample."""
    num_problems: int = 200
    max_tokens: int = 512
    seed: int = 0
    engine: EngineConfig = field(default_factory=EngineConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    format: PromptFormat = field(default_factory=PromptFormat)

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1 (got {self.n})")
        if self.num_problems < 1:
            raise ValueError(f"num_problems must be >= 1 (got {self.num_problems})")
        if not (self.models and self.benchmarks and self.modes):
            raise ValueError("an evaluation needs at least one model, one benchmark and one mode")


def model_label(spec: str) -> tuple[str, str]:
    """(label, model) for ``LABEL=PATH`` or a bare name/path; a trainer checkpoint's
    ``RUN/checkpoints/step_N/model`` is labelled ``RUN/step_N``."""
    label, sep, model = spec.partition("=")
    if sep:
        if not label or not model:
            raise ValueError(f"model must be NAME, PATH or LABEL=PATH (got {spec!r})")
        return label, model
    parts = Path(spec).parts
    if len(parts) >= 4 and parts[-1] == "model" and parts[-3] == "checkpoints":
        return f"{parts[-4]}/{parts[-2]}", spec
    return spec, spec


def sample_records(label: str, bench: Benchmark, mode: EvalMode, groups) -> list[dict]:
    """One JSON-ready line per sample: what was asked, answered and scored."""
    return [{"model": label, "bench": bench.name, "mode": mode.name, "problem": g, "sample": s.sample_index,
             "correct": is_correct(s, bench.correct_term), "length": len(s.response_token_ids),
             "finish_reason": s.finish_reason, "soft_steps": len(s.soft_steps), "answer": s.answer,
             "response": s.response_text}
            for g, group in enumerate(groups) for s in group]


def cell_settings(plan: EvalPlan, model: str, bench: Benchmark, mode: EvalMode) -> dict:
    """Everything that decides a cell's numbers (stored with it; ``resume`` compares them)."""
    return {"model_path": model, "dtype": resolve_dtype(plan.engine.dtype), "source": dataclasses.asdict(bench.source),
            "num_problems": plan.num_problems, "n": 1 if mode.deterministic else plan.n,
            "max_tokens": plan.max_tokens, "seed": plan.seed, "temperature": mode.temperature, "top_p": mode.top_p,
            "soft_thinking": mode.soft_thinking, "format": dataclasses.asdict(plan.format)}


def earlier_cells(out_dir: Path) -> dict[tuple[str, str, str], dict]:
    """The cells an earlier run finished in ``out_dir``, by (model, bench, mode)."""
    path = output_paths(out_dir)["json"]
    return {(c["model"], c["bench"], c["mode"]): c for c in json.loads(path.read_text())} if path.exists() else {}


def plan_keys(plan: EvalPlan) -> list[tuple[str, str, str]]:
    return [(label, bench.name, mode.name) for label, _ in map(model_label, plan.models)
            for bench in plan.benchmarks for mode in plan.modes]


def with_later_defaults(stored: dict, record_type: type) -> dict:
    """A record stored as ``dataclasses.asdict`` with the fields its class gained since then
    filled in with their defaults, which is what the earlier cell was made with."""
    filled = dict(stored)
    for record_field in dataclasses.fields(record_type):
        if record_field.name in filled:
            continue
        if record_field.default is not dataclasses.MISSING:
            default = record_field.default
        elif record_field.default_factory is not dataclasses.MISSING:
            default = record_field.default_factory()
        else:
            continue  # a field without default cannot have been added later
        stored_form = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default
        filled[record_field.name] = json.loads(json.dumps(stored_form))
    return filled


def finished_cells(plan: EvalPlan, out_dir: Path, earlier: dict) -> dict[tuple[str, str, str], dict]:
    """The ``earlier`` cells (``earlier_cells(out_dir)``) that this plan would compute again,
    by (model, bench, mode); one made with other settings is an error."""
    done = {}
    for label, model in map(model_label, plan.models):
        for bench in plan.benchmarks:
            for mode in plan.modes:
                cell = earlier.get((label, bench.name, mode.name))
                if cell is None:
                    continue
                wanted = json.loads(json.dumps(cell_settings(plan, model, bench, mode)))
                stored = dict(cell.get("settings", {}))
                for key, record in (("source", bench.source), ("format", plan.format)):
                    if key in stored:
                        stored[key] = with_later_defaults(stored[key], type(record))
                changed = sorted(k for k in wanted if stored.get(k) != wanted[k])
                if changed:
                    raise ValueError(f"{output_paths(out_dir)['json']}: {label} | {bench.name} | {mode.name} was made "
                                     f"with other {changed}; evaluate into another --out, or without --resume")
                done[label, bench.name, mode.name] = cell
    return done


def evaluate(plan: EvalPlan, out_dir: Path | None = None, resume: bool = False) -> list[dict]:
    """One cell per (model, benchmark, mode), in that order. With ``out_dir``, the outputs
    are rewritten as each mode finishes (its samples appended to samples.jsonl), so a long
    evaluation that stops keeps what it finished; ``resume`` reuses those cells."""
    earlier = earlier_cells(out_dir) if resume and out_dir is not None else {}
    done = finished_cells(plan, out_dir, earlier)
    # Resuming adds to the folder: the finished cells of other models, benchmarks or modes
    # stay in it (a plan naming fewer modes must not erase the rest).
    planned = set(plan_keys(plan))
    others = [c for key, c in earlier.items() if key not in planned]
    if done or others:
        log.info("resuming: %d cell(s) finished in an earlier run in %s (%d of them outside this plan, kept)",
                 len(done) + len(others), out_dir, len(others))
    samples_path = output_paths(out_dir)["samples"] if out_dir is not None else None
    if samples_path is not None:
        _keep_samples(samples_path, {*done, *((c["model"], c["bench"], c["mode"]) for c in others)})
    cells = []
    for label, model in map(model_label, plan.models):
        with _ModelPool(plan, model) as pool:
            for bench in plan.benchmarks:
                missing = [mode for mode in plan.modes if (label, bench.name, mode.name) not in done]
                fresh = _sample_modes(plan, label, pool, bench, missing, samples_path)
                for mode in plan.modes:
                    cells.append(done.get((label, bench.name, mode.name)) or next(fresh))
                    if out_dir is not None:
                        write_outputs(cells + others, out_dir)
    return cells


class _ModelPool:
    """A model's rollout pool and tokenizer, started at the first use (a model whose cells
    are all finished starts nothing) and shut down on exit."""

    def __init__(self, plan: EvalPlan, model: str):
        self.plan, self.model = plan, model
        self._pool = self.tokenizer = None

    def generate(self, groups, mode: EvalMode, rewards: dict[str, float]):
        from rollout.pool import RolloutPool

        if self._pool is None:
            self._pool = RolloutPool(dataclasses.replace(self.plan.engine, model=self.model), rewards, self.plan.pool)
        plan = self.plan
        return sample_mode(self._pool, groups, mode, plan.n, plan.max_tokens, plan.seed, rewards=rewards)

    def groups(self, bench: Benchmark):
        from transformers import AutoTokenizer

        from rollout.worker import GroupRequest
        from vllm_soft.models import resolve_model

        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.model))
        items = load_prompts(bench.source)[: self.plan.num_problems]
        return [GroupRequest(i, format_prompt(item, self.tokenizer, self.plan.format), item.answer, item.entry)
                for i, item in enumerate(items)]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self._pool is not None:
            self._pool.shutdown()


def _sample_modes(plan: EvalPlan, label: str, pool: _ModelPool, bench: Benchmark, modes: list[EvalMode],
                  samples_path: Path | None) -> Iterator[dict]:
    """The cell of each of ``modes`` in turn, from the model's pool."""
    if not modes:
        return
    groups = pool.groups(bench)
    for mode in modes:
        start = time.perf_counter()
        sampled = pool.generate(groups, mode, {bench.correct_term: 1.0})
        cell = {"model": label, "bench": bench.name, "mode": mode.name, "label": mode.label,
                **summarize_mode(sampled, time.perf_counter() - start, bench.correct_term),
                "settings": cell_settings(plan, pool.model, bench, mode)}
        if samples_path is not None:
            with samples_path.open("a") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n"
                             for r in sample_records(label, bench, mode, sampled))
        log.info("%s | %s | %s: pass@1 %.1f%% (n=%d), %.0f tokens, %.0f s", label, bench.name, mode.name,
                 100 * cell["pass@1"], cell["n"], cell["mean_length"], cell["wall_s"])
        yield cell


def sample_mode(pool, groups, mode: EvalMode, n: int, max_tokens: int, seed: int, progress: bool = True,
                rewards: dict[str, float] | None = None):
    """The groups' samples in ``mode`` from a rollout pool: n per problem, one where the
    mode is deterministic (the harness's cells and the trainer's held-out evaluation);
    ``rewards``: the reward terms (default: the pool's)."""
    sampling = SamplingConfig(
        group_size=1 if mode.deterministic else n, temperature=mode.temperature, top_p=mode.top_p,
        max_tokens=max_tokens, seed=seed, soft_thinking=mode.soft_thinking,
    )
    return pool.generate(groups, sampling, progress=progress, rewards=rewards)


def _keep_samples(samples_path: Path, finished: set[tuple[str, str, str]]) -> None:
    """Leave in samples.jsonl only the samples of the ``finished`` cells (a cell that never
    finished left some of its samples)."""
    lines = samples_path.read_text().splitlines() if finished and samples_path.exists() else []
    kept = [line for line in lines if tuple(json.loads(line)[k] for k in ("model", "bench", "mode")) in finished]
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    samples_path.write_text("".join(line + "\n" for line in kept))


def output_paths(out_dir: Path) -> dict[str, Path]:
    return {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "plot": out_dir / "accuracy.png",
            "samples": out_dir / "samples.jsonl"}


def write_outputs(cells: list[dict], out_dir: Path) -> dict[str, Path]:
    """results.json, results.md and accuracy.png in ``out_dir`` (beside samples.jsonl)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir)
    paths["json"].write_text(json.dumps(cells, indent=2) + "\n")
    paths["markdown"].write_text(markdown(cells))
    plot(cells, paths["plot"])
    return paths
