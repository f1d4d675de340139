"""What a run shows and leaves behind: a progress bar (or progress lines with rate and ETA),
``metrics.jsonl``, ``results.csv``, TensorBoard event files and ``curves.png``.

Only rank 0 calls into this module with ``enabled=True``; the other ranks get objects that
do nothing, so the trainer needs no ``if rank == 0`` around each call.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sightkit._api import export

#: Beside ``metrics.jsonl``: the same records as a table.
CSV_NAME = "results.csv"
#: The prefix of TensorBoard's event file names (``events.out.tfevents.<time>.<host>.<pid>...``).
EVENTS_PREFIX = "events.out.tfevents."


@export("engine.MetricsLog")
class MetricsLog:
    """Append-only JSON lines, one record (a flat dict with a ``step`` and a ``kind``) per line,
    mirrored into ``results.csv`` and TensorBoard event files in the same folder.

    Each line is flushed when written, so the file is readable while the run goes on and
    holds every completed record if the run dies. ``results.csv`` has one row per record and
    one column per key of any record (so its columns are exactly the keys of
    ``metrics.jsonl``; a key that appears later, such as the first evaluation's metrics,
    rewrites the file with the new column). TensorBoard gets every numeric value but ``step``
    and ``epoch`` as the scalar ``KIND/KEY`` (``train/loss``, ``val/AP``) at its step; COCO's
    -1 placeholders (no object of that size) are left out, as in :func:`plot_curves`.

    Args:
        path: the ``metrics.jsonl`` file.
        enabled: False makes every method a no-op (ranks other than 0).
        csv: also write ``results.csv`` beside it.
        tensorboard: also write TensorBoard event files beside it.
    """

    def __init__(self, path: str | Path, enabled: bool = True, *, csv: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.csv_path = self.path.with_name(CSV_NAME) if csv else None
        self.tensorboard = tensorboard
        self._columns: list[str] | None = None
        self._writer: Any = None
        self._purge_step: int | None = None

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(dict(record), allow_nan=True) + "\n")
        if self.csv_path is not None:
            self._append_row(record)
        if self.tensorboard:
            self._add_scalars(record)

    def read(self) -> list[dict[str, Any]]:
        """Every record in the file (an empty list when there is none)."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def reset(self) -> None:
        """Remove the files of an earlier run in this folder (a fresh run that reuses it)."""
        if not self.enabled:
            return
        self.path.unlink(missing_ok=True)
        if self.csv_path is not None:
            self.csv_path.unlink(missing_ok=True)
        if self.path.parent.is_dir():
            for events in self.path.parent.glob(EVENTS_PREFIX + "*"):
                events.unlink()
        self._columns = None

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (the work a resumed run redoes), atomically, in
        every file: TensorBoard hides the later events of the earlier run (``purge_step``)."""
        if not self.enabled:
            return
        self._purge_step = step + 1
        if not self.path.is_file():
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        _write_atomically(self.path, "".join(json.dumps(r, allow_nan=True) + "\n" for r in kept))
        if self.csv_path is not None:
            self._rewrite_csv(kept)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (writing again reopens one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---------------------------------------------------------------- results.csv

    def _append_row(self, record: Mapping[str, Any]) -> None:
        if self._columns is None:
            self._columns = _csv_header(self.csv_path)
        if self._columns is None or any(key not in self._columns for key in record):
            self._rewrite_csv(self.read())
            return
        with open(self.csv_path, "a", newline="") as handle:
            csv.DictWriter(handle, self._columns).writerow(dict(record))

    def _rewrite_csv(self, records: list[dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(key for record in records for key in record))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns)
        writer.writeheader()
        writer.writerows(records)
        _write_atomically(self.csv_path, buffer.getvalue())
        self._columns = columns

    # ---------------------------------------------------------------- TensorBoard

    def _add_scalars(self, record: Mapping[str, Any]) -> None:
        if self._writer is None:
            # Imported here: loading TensorBoard's writer costs a second, and only rank 0 needs it.
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path.parent), purge_step=self._purge_step)
        kind, step = record.get("kind", "train"), int(record.get("step", 0))
        for key, value in record.items():
            if key in ("step", "epoch") or not _is_number(value) or not math.isfinite(value):
                continue
            if is_placeholder(key, value):
                continue
            self._writer.add_scalar(f"{kind}/{key}", value, step)
        self._writer.flush()


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _csv_header(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        return next(csv.reader(handle), None)


# ---------------------------------------------------------------------- curves.png

# Numeric record fields that are bookkeeping, not losses or metrics.
_NOT_LOSSES = frozenset({"step", "epoch", "time", "it_s", "bad_steps", "bad_samples", "grad_norm"})
# Losses of a decoder's intermediate layers (DETR's auxiliary losses: loss_ce_0, loss_bbox_3, ...).
_AUXILIARY = re.compile(r"_\d+$")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_placeholder(key: str, value: float) -> bool:
    """COCO writes -1 for an AP or AR it cannot compute (no object of that size): not a value."""
    return key.startswith(("AP", "AR")) and value < 0


# (title, record kind, which keys) of each panel of curves.png, in display order.
_PANELS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("training losses", "train", lambda k: k not in _NOT_LOSSES and k != "lr"),
    ("validation losses", "val", lambda k: k.startswith("val_")),
    ("AP", "val", lambda k: k.startswith("AP")),
    ("AR", "val", lambda k: k.startswith("AR")),
    ("validation metrics", "val", lambda k: not k.startswith(("val_", "AP", "AR")) and k not in _NOT_LOSSES),
    ("learning rate", "train", lambda k: k == "lr"),
)


def _series(records: list[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    return [
        (r["step"], r[key])
        for r in records
        if _is_number(r.get(key)) and math.isfinite(r[key]) and not is_placeholder(key, r[key])
    ]


@export("engine.curves_figure")
def curves_figure(records: list[Mapping[str, Any]]) -> Figure:
    """The training curves of ``metrics.jsonl`` records as a matplotlib ``Figure``.

    One panel per group against the optimiser step: training losses, validation losses,
    AP, AR, other validation metrics, learning rate; a group with nothing to draw has no
    panel. Each panel's series have distinct colours; auxiliary decoder-layer losses
    (``loss_ce_0``...) are thin grey lines under one legend entry; COCO's -1 placeholders
    and non-finite values are not drawn.
    """
    # The object API with the Agg canvas: no pyplot state, no GUI backend, works in any process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from sightkit.eval.plots import distinct_colours

    drawn = []
    for title, kind, wanted in _PANELS:
        rows = [r for r in records if r.get("kind") == kind]
        keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if wanted(k) and _is_number(v)))
        series = {key: points for key in keys if (points := _series(rows, key))}
        if series:
            drawn.append((title, series))
    columns = min(3, max(len(drawn), 1))
    rows_count = max(math.ceil(len(drawn) / columns), 1)
    figure = Figure(figsize=(5.2 * columns, 3.8 * rows_count), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows_count, columns, squeeze=False).ravel()
    for axis, (title, series) in zip(axes, drawn, strict=False):
        main = [key for key in series if not _AUXILIARY.search(key)]
        auxiliary = [key for key in series if _AUXILIARY.search(key)]
        for index, key in enumerate(auxiliary):
            steps, values = zip(*series[key], strict=True)
            label = f"auxiliary layers ({len(auxiliary)})" if index == 0 else None
            axis.plot(steps, values, color="0.75", linewidth=0.8, label=label, zorder=1)
        for key, colour in zip(main, distinct_colours(len(main)), strict=True):
            steps, values = zip(*series[key], strict=True)
            axis.plot(steps, values, color=colour, label=key, marker="o" if len(steps) < 20 else None, zorder=2)
        if title == "training losses" and all(v > 0 for points in series.values() for _, v in points):
            axis.set_yscale("log")
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if title != "learning rate" or len(series) > 1:
            entries = len(main) + (1 if auxiliary else 0)
            axis.legend(fontsize="small", ncol=1 if entries <= 6 else 2)
    for axis in axes[len(drawn) :]:
        axis.set_visible(False)
    if not drawn:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no records to plot", ha="center", va="center")
    return figure


@export("engine.plot_curves")
def plot_curves(records: list[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`curves_figure` of ``metrics.jsonl`` records to a PNG at ``path``."""
    path = Path(path)
    curves_figure(records).savefig(path, dpi=100)
    return path


# ---------------------------------------------------------------------- progress


def format_duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``3m05s`` or ``42s`` (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressBar:
    """A rich progress bar over optimiser steps with loss, lr, it/s and ETA.

    Shown only when ``enabled`` and stdout is a terminal; without one (CI logs, ``nohup``,
    pipes) the trainer prints progress lines instead, with :meth:`rate_and_eta`.
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stdout.isatty()
        self.total, self.start = total, start
        self._started = time.perf_counter()
        self._progress: Progress | None = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}", markup=False),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(),
            )
            self._task = self._progress.add_task("train", total=total, completed=start, stats="")
            self._progress.start()

    def rate_and_eta(self, step: int) -> str:
        """``"2.31 it/s  eta 3m05s"``: steps per second since the bar started (time spent
        evaluating and saving included) and the time left at that rate."""
        done, elapsed = step - self.start, time.perf_counter() - self._started
        if done <= 0 or elapsed <= 0:
            return "? it/s  eta ?"
        rate = done / elapsed
        return f"{rate:.3g} it/s  eta {format_duration((self.total - step) / rate)}"

    def update(self, step: int, stats: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=stats)

    def print(self, text: str) -> None:
        """A line above the bar (or on stdout when there is no bar)."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
