"""`python -m trainer.report`: curves per run and the comparison plot, from metrics.jsonl."""

import json

from trainer.report import main


def _write_run(folder, slope):
    folder.mkdir()
    lines = [{"step": 0, "eval_accuracy": 0.2, "elapsed_s": 60.0}]
    lines += [{"step": s, "reward_mean": 0.1 * s, "accuracy": 0.1, "logprob_gap": 1e-6, "elapsed_s": 60.0 + 90 * s,
               **({"eval_accuracy": 0.2 + slope * s, "eval_soft_accuracy": 0.1 + slope * s} if s % 2 == 0 else {})}
              for s in range(1, 5)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_report_draws_each_run_and_the_comparison(tmp_path, capsys):
    _write_run(tmp_path / "a", 0.02)
    _write_run(tmp_path / "b", 0.04)
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--compare", str(tmp_path / "both.png")])
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "a" / "curves.png"), str(tmp_path / "b" / "curves.png"), str(tmp_path / "both.png")]
    import matplotlib.image
    import numpy as np

    def has_colour(image, hex_colour):
        rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        return bool((np.abs(image[..., :3] - rgb).max(-1) < 0.02).any())

    # matplotlib's cycle: C0 blue, C1 orange, C2 green, C3 red: one curve each.
    curves = matplotlib.image.imread(printed[0])
    assert curves.shape[:2] == (990, 1320)  # 12 x 9 in at 110 dpi
    assert has_colour(curves, "#1f77b4") and has_colour(curves, "#ff7f0e"), "plain and soft held-out curves"
    both = matplotlib.image.imread(printed[2])
    assert all(has_colour(both, c) for c in ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")), "2 runs x 2 curves"
