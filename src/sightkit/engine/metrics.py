"""What a run shows and leaves behind: a progress bar, ``metrics.jsonl`` and ``curves.png``.

Only rank 0 calls into this module with ``enabled=True``; the other ranks get objects that
do nothing, so the trainer needs no ``if rank == 0`` around each call.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sightkit._api import export


@export("engine.MetricsLog")
class MetricsLog:
    """Append-only JSON lines, one record (a flat dict with a ``step``) per line.

    Each line is flushed when written, so the file is readable while the run goes on and
    holds every completed record if the run dies.
    """

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(dict(record), allow_nan=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """Every record in the file (an empty list when there is none)."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (the work a resumed run redoes), atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in kept))
        os.replace(temporary, self.path)


@export("engine.plot_curves")
def plot_curves(records: list[Mapping[str, Any]], path: str | Path) -> Path:
    """Plot training curves from ``metrics.jsonl`` records into a PNG at ``path``.

    Three panels against the optimiser step: the training losses (the numeric values of
    records with ``kind="train"``), the learning rate, and the validation metrics
    (``kind="val"``).
    """
    # The object API with the Agg canvas: no pyplot state, no GUI backend, works in any process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    figure = Figure(figsize=(15, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    panels = (
        (axes[0], train, lambda k: k not in _NOT_LOSSES and k != "lr", "training losses"),
        (axes[1], train, lambda k: k == "lr", "learning rate"),
        (axes[2], val, lambda k: k not in _NOT_LOSSES, "validation"),
    )
    for axis, rows, wanted, title in panels:
        keys = sorted({k for r in rows for k, v in r.items() if wanted(k) and _is_number(v)})
        plotted = []
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if _is_number(r.get(key)) and math.isfinite(r[key])]
            if points:
                axis.plot(*zip(*points, strict=True), label=key, marker="o" if len(points) < 20 else None)
                plotted.extend(value for _, value in points)
        if title == "training losses" and plotted and min(plotted) > 0:
            axis.set_yscale("log")
        axis.set_title(title)
        axis.set_xlabel("step")
        if plotted:
            axis.legend(fontsize="small")
        axis.grid(alpha=0.3)
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


# Numeric record fields that are bookkeeping, not losses or metrics.
_NOT_LOSSES = frozenset({"step", "epoch", "time", "it_s", "bad_steps", "grad_norm"})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class ProgressBar:
    """A rich progress bar over optimiser steps with loss, lr, it/s and ETA.

    Shown only when ``enabled`` and stdout is a terminal (not in CI logs or tests).
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stdout.isatty()
        self._progress: Progress | None = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(),
            )
            self._task = self._progress.add_task("train", total=total, completed=start, stats="")
            self._progress.start()

    def update(self, step: int, stats: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=stats)

    def print(self, text: str) -> None:
        """A line above the bar (or on stdout when there is no bar)."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
