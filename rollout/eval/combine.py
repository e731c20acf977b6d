"""One table from several evaluation runs: ``python -m rollout.eval.combine``.

    python -m rollout.eval.combine runs/eval_arith/results.json runs/eval_gsm/results.json \
        --rename smollm2-135m=untrained --out runs/eval_all

Cells keep their order (first run first); a (model, benchmark, mode) cell given twice is an
error, since one table cannot show two numbers for it.
"""

import argparse
import json
from pathlib import Path


def combine(cell_lists: list[list[dict]], renames: dict[str, str] | None = None) -> list[dict]:
    """The cells of every run, models renamed by ``renames`` (old label -> new)."""
    renames = renames or {}
    combined, seen = [], {}
    for run_index, cells in enumerate(cell_lists):
        for cell in cells:
            cell = {**cell, "model": renames.get(cell["model"], cell["model"])}
            key = (cell["model"], cell["bench"], cell["mode"])
            if key in seen:
                raise ValueError(f"model {key[0]!r}, bench {key[1]!r}, mode {key[2]!r} is in run {seen[key]} and "
                                 f"run {run_index}; rename one model (--rename OLD=NEW) or drop a run")
            seen[key] = run_index
            combined.append(cell)
    return combined


def main(argv=None) -> None:
    from rollout.eval.run import write_outputs

    parser = argparse.ArgumentParser(prog="python -m rollout.eval.combine", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of earlier evaluations")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="relabel a model's rows")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    renames = {}
    for pair in args.rename:
        old, sep, new = pair.partition("=")
        if not (sep and old and new):
            parser.error(f"--rename expects OLD=NEW (got {pair!r})")
        renames[old] = new
    cells = combine([json.loads(path.read_text()) for path in args.results], renames)
    paths = write_outputs(cells, args.out)
    print(paths["markdown"].read_text())
    print(f"wrote {paths['markdown']}, {paths['json']}, {paths['plot']}")


if __name__ == "__main__":
    main()
