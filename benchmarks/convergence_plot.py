"""COCO box AP against training steps for runs of ``benchmarks/detect_convergence.py``, side by side.

``python -m benchmarks convergence_plot RUN_DIR [RUN_DIR ...] [--out runs/bench/detect_convergence.png]``

Each ``RUN_DIR`` is a model's run folder (``<--out of detect_convergence>/<model>``); its
``metrics.jsonl`` is read as it stands, so a run still in progress shows the budgets it has
reached. Prints the table (AP and AP50 at each evaluated step, the AP ratio against the first
run, the seconds per step so far) and draws AP and AP50 against steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def read_run(folder: Path) -> tuple[dict[int, tuple[float, float]], float | None]:
    """``({step: (AP, AP50)}, median wall seconds per training step of the logged windows, or None)``."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evaluations = {r["step"]: (r["AP"], r["AP50"]) for r in records if r["kind"] == "val"}
    rates = [r["it_s"] for r in records if r["kind"] == "train" and r.get("it_s")]
    return evaluations, statistics.median(1 / rate for rate in rates) if rates else None


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/detect_convergence.png"))
    args = parser.parse_args(argv)
    runs = {folder.name: read_run(folder) for folder in args.runs}
    baseline = next(iter(runs))
    print(f"{'model':<16} {'step':>6} {'AP':>7} {'AP50':>7} {'AP / ' + baseline:>22}")
    for name, (evaluations, seconds) in runs.items():
        for step, (ap, ap50) in sorted(evaluations.items()):
            base = runs[baseline][0].get(step, (float("nan"),))[0]
            ratio = f"{ap / base:.2f}" if base > 0 else "-"
            print(f"{name:<16} {step:>6} {ap:>7.3f} {ap50:>7.3f} {ratio:>22}")
        if seconds is not None:
            print(f"{name:<16} {seconds:.2f} s per training step (median wall, this machine, so far)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=80)
    for name, (evaluations, _) in runs.items():
        steps = sorted(evaluations)
        for axis, index, metric in ((axes[0], 0, "AP"), (axes[1], 1, "AP50")):
            axis.plot(steps, [evaluations[s][index] for s in steps], marker="o", label=name)
            axis.set_xlabel("training step")
            axis.set_ylabel(f"COCO box {metric}")
            axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle("synthetic shapes, same data, batch, schedule and budget")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out)
    print(f"wrote {args.out}")
