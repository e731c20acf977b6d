"""The evaluation command: ``vllm-soft eval`` or ``python -m rollout.eval``.

Evaluates each model on each benchmark in each decoding mode and writes results.json,
results.md (accuracy block, then length block, then details per benchmark), accuracy.png and
samples.jsonl (every response, scored).

    vllm-soft eval --model M [--model M2] --bench B [--bench B2] --modes ... --n 4 --out DIR
"""

import argparse
import json
import logging
from pathlib import Path

from rollout.eval.modes import MODES


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m rollout.eval", description=__doc__.splitlines()[2])
    parser.add_argument("--model", action="append", required=True,
                        help="named model or Hugging Face folder (a checkpoint's model/), optionally LABEL=PATH; "
                             "repeat to compare")
    parser.add_argument("--bench", action="append", required=True,
                        help="gsm8k, math500, aime2024, gpqa_diamond, or a reasoning-gym task; repeat for several")
    parser.add_argument("--bench-args", action="append", default=[], metavar="BENCH=JSON",
                        help='reasoning-gym settings, e.g. basic_arithmetic=\'{"min_terms": 2, "max_terms": 2}\'')
    parser.add_argument("--data", action="append", default=[], metavar="BENCH=PATH",
                        help="a local copy of a Hugging Face benchmark (.jsonl, .parquet or save_to_disk folder)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--set", action="append", default=[], metavar="MODE.KNOB=VALUE", dest="knobs",
                        help="override a mode's knob: soft_gumbel.soft_thinking.tau=0.25, sampling.temperature=1.0")
    parser.add_argument("--n", type=int, default=4, help="samples per problem for the modes that sample")
    parser.add_argument("--num-problems", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", help="bfloat16, float32, or auto (bf16 on CUDA or CPUs with bf16 units)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="engine context length (default: --max-tokens + 1024 for the prompt)")
    parser.add_argument("--kv-cache-gib", type=float, default=None,
                        help="KV cache per engine (default: 1 on CPU; on GPU, 0.3 of its memory)")
    parser.add_argument("--max-num-seqs", type=int, default=128, help="sequences per engine batch")
    parser.add_argument("--engine-core-process", action=argparse.BooleanOptionalAction, default=True,
                        help="vLLM's engine core in a process of its own (vLLM's default, best throughput); "
                        "--no-engine-core-process starts each engine ~25 s sooner on CPU, for short evaluations")
    parser.add_argument("--workers", type=int, default=1, help="rollout workers (one engine each)")
    parser.add_argument("--cpus-per-worker", type=int, default=2)
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true",
                        help="keep the cells an earlier run finished in --out (same settings), compute the rest")
    return parser


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option} expects KEY=VALUE (got {value!r})")
        pairs[key] = rest
    return pairs


def _knob_overrides(values: list[str]) -> dict[str, dict]:
    import yaml

    overrides: dict[str, dict] = {}
    for dotted, value in _pairs(values, "--set").items():
        mode, sep, knob = dotted.partition(".")
        if not sep:
            raise SystemExit(f"--set expects MODE.KNOB=VALUE (got {dotted!r})")
        overrides.setdefault(mode, {})[knob] = yaml.safe_load(value)
    return overrides


def run(args: argparse.Namespace) -> dict:
    from rollout.settings import EngineConfig, PoolConfig
    from rollout.eval.benchmarks import resolve_benchmark
    from rollout.eval.modes import resolve_modes
    from rollout.eval.run import EvalPlan, evaluate, output_paths
    from vllm_soft.runtime import configure_cpu_threads

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    bench_args = {name: json.loads(text) for name, text in _pairs(args.bench_args, "--bench-args").items()}
    data = _pairs(args.data, "--data")
    unknown = sorted((set(bench_args) | set(data)) - set(args.bench))
    if unknown:
        raise SystemExit(f"--bench-args/--data name benchmark(s) {unknown} that no --bench selects")
    plan = EvalPlan(
        models=args.model,
        benchmarks=[resolve_benchmark(b, bench_args.get(b), data.get(b), seed=args.seed,
                                      size=max(args.num_problems, 1)) for b in args.bench],
        modes=resolve_modes(args.modes, _knob_overrides(args.knobs)),
        n=args.n, num_problems=args.num_problems, max_tokens=args.max_tokens, seed=args.seed,
        engine=EngineConfig(dtype=args.dtype, max_model_len=args.max_model_len or args.max_tokens + 1024,
                            kv_cache_gib=args.kv_cache_gib or (1.0 if args.gpus_per_worker == 0 else None),
                            max_num_seqs=args.max_num_seqs, engine_core_process=args.engine_core_process),
        pool=PoolConfig(num_workers=args.workers, num_cpus_per_worker=args.cpus_per_worker,
                        num_gpus_per_worker=args.gpus_per_worker),
    )
    if args.gpus_per_worker == 0:
        configure_cpu_threads()
    evaluate(plan, args.out, resume=args.resume)
    paths = output_paths(args.out)
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


def add_command(commands) -> None:
    """``vllm-soft eval`` (registered in the ``vllm_soft.commands`` entry-point group)."""
    parser = commands.add_parser("eval", help="accuracy, pass@k and length per decoding mode (python -m rollout.eval)")
    build_parser(parser).set_defaults(run=run)


def main(argv=None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
