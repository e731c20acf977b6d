"""From sampled groups to the numbers of one table cell, and from cells to the outputs.

    summarize_mode(groups, seconds) ─► pass@1 ± s.e., pass@k, mean length (all, correct),
                                        cold-stop rate, wall time
    markdown(cells)                  ─► accuracy block, then length block (the Soft Thinking
                                        paper's layout), then one detail table per benchmark
    plot(cells, path)                ─► pass@1 bars with error bars: a panel per benchmark,
                                        modes along x, a colour per model
"""

import statistics

from rollout.eval.passk import mean_pass_at_k
from rollout.sample import Sample
from rollout.summary import is_correct


def summarize_mode(groups: list[list[Sample]], seconds: float, term: str | None = None) -> dict:
    """One (model, benchmark, mode) cell from its n samples per problem (``term``: the
    reward term that checks answers)."""
    n = len(groups[0])
    if any(len(group) != n for group in groups):
        raise ValueError("every problem needs the same number of samples n")
    correct_counts = [sum(is_correct(s, term) for s in group) for group in groups]
    samples = [s for group in groups for s in group]
    lengths = [len(s.response_token_ids) for s in samples]
    correct_lengths = [len(s.response_token_ids) for s in samples if is_correct(s, term)]
    soft = [s for s in samples if s.soft_steps]
    pass1, stderr = mean_pass_at_k(correct_counts, n, 1)
    return {
        "problems": len(groups),
        "n": n,
        "pass@1": pass1,
        "pass@1_stderr": stderr,
        "pass@k": {k: mean_pass_at_k(correct_counts, n, k)[0] for k in _powers_of_two(n)},
        "mean_length": statistics.fmean(lengths),
        "mean_length_correct": statistics.fmean(correct_lengths) if correct_lengths else None,
        "cold_stop_rate": (sum(s.soft_steps[-1]["end_reason"] == "cold_stop" for s in soft) / len(soft)) if soft else None,
        "wall_s": seconds,
    }


def _powers_of_two(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else [*ks, n]


def markdown(cells: list[dict], wall_time: bool = True) -> str:
    """Cells are ``{"model", "bench", "mode", "label", **summarize_mode(...)}``;
    ``wall_time=False`` leaves out the one column a seed does not fix."""
    benches = list(dict.fromkeys(c["bench"] for c in cells))
    rows = list(dict.fromkeys((c["model"], c["label"]) for c in cells))
    by_key = {(c["model"], c["label"], c["bench"]): c for c in cells}

    def block(value, fmt) -> list[str]:
        out = []
        for model, label in rows:
            values = [by_key.get((model, label, b)) for b in benches]
            numbers = [value(v) for v in values if v is not None and value(v) is not None]
            average = fmt(statistics.fmean(numbers)) if len(numbers) == len(benches) else "-"
            out.append(f"| {model} | {label} | " + " | ".join(
                fmt(value(v)) if v is not None and value(v) is not None else "-" for v in values) + f" | {average} |")
        return out

    header = "| model | mode | " + " | ".join(benches) + " | avg |"
    rule = "|---|---|" + "---:|" * (len(benches) + 1)
    lines = ["### Accuracy (pass@1, %)", "", header, rule,
             *block(lambda c: 100 * c["pass@1"], lambda x: f"{x:.1f}"), "",
             "### Generation length (tokens, all samples)", "", header, rule,
             *block(lambda c: c["mean_length"], lambda x: f"{x:.0f}")]
    for bench in benches:
        lines += ["", f"### {bench}", "",
                  "| model | mode | pass@1 (%) | ± s.e. | pass@k (%) | length | length, correct | cold stop |"
                  + (" wall s |" if wall_time else ""),
                  "|---|---|---:|---:|---|---:|---:|---:|" + ("---:|" if wall_time else "")]
        for c in (c for c in cells if c["bench"] == bench):
            passk = ", ".join(f"@{k} {100 * v:.1f}" for k, v in c["pass@k"].items())
            correct = f"{c['mean_length_correct']:.0f}" if c["mean_length_correct"] is not None else "-"
            cold = f"{100 * c['cold_stop_rate']:.0f}%" if c["cold_stop_rate"] is not None else "-"
            lines.append(f"| {c['model']} | {c['label']} | {100 * c['pass@1']:.1f} | {100 * c['pass@1_stderr']:.1f} | "
                         f"{passk} | {c['mean_length']:.0f} | {correct} | {cold} |"
                         + (f" {c['wall_s']:.0f} |" if wall_time else ""))
    return "\n".join(lines) + "\n"


def plot(cells: list[dict], path) -> None:
    """pass@1 (%) with standard-error bars: one panel per benchmark, modes along x, one
    bar (colour) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(dict.fromkeys(c["bench"] for c in cells))
    models = list(dict.fromkeys(c["model"] for c in cells))
    width = 0.8 / len(models)
    fig, axes = plt.subplots(1, len(benches), squeeze=False, figsize=(1.0 + 4.5 * len(benches), 4.2))
    for ax, bench in zip(axes[0], benches):
        in_bench = [c for c in cells if c["bench"] == bench]
        labels = list(dict.fromkeys(c["label"] for c in in_bench))
        for i, model in enumerate(models):
            found = {c["label"]: c for c in in_bench if c["model"] == model}
            xs = [x + (i - (len(models) - 1) / 2) * width for x, label in enumerate(labels) if label in found]
            ys = [100 * found[label]["pass@1"] for label in labels if label in found]
            errors = [100 * found[label]["pass@1_stderr"] for label in labels if label in found]
            ax.bar(xs, ys, width, yerr=errors, capsize=3, color=f"C{i}", label=model)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(bench)
        ax.set_ylabel("pass@1 (%)")
        ax.set_ylim(bottom=0)
    fig.suptitle("Accuracy by decoding mode (error bars: one standard error)", fontsize=10)
    if len(models) > 1:
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.95),
                   ncol=min(len(models), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if len(models) > 1 else 0.96))
    fig.savefig(path, dpi=120)
    plt.close(fig)
