"""Precision-recall curves as a PNG (matplotlib, without pyplot's global state)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from sightkit._api import export

#: Above this many categories, per-category curves are drawn thin and unlabelled.
_MAX_LABELLED = 12


def distinct_colours(count: int) -> list[tuple[float, float, float, float]]:
    """``count`` RGBA colours that differ from each other, for the labelled series of one plot:
    tab10, tab20 beyond 10 (matplotlib's default cycle repeats after 10), then a spread of turbo."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](i / (count - 1)) for i in range(count)]


@export("eval.plot_precision_recall")
def plot_precision_recall(
    precision: np.ndarray,
    path: str | os.PathLike[str],
    *,
    names: Sequence[str],
    recall_thresholds: np.ndarray | None = None,
    title: str = "precision-recall",
) -> Figure:
    """Plot one precision-recall curve per category and their mean, and save the figure.

    Args:
        precision: ``[R, K]`` precision at ``R`` recall thresholds for ``K`` categories, as
            COCO's interpolated precision (``CocoEvaluator.precision[t, :, :, 0, -1]``);
            a category whose column holds -1 has no ground truth and is left out.
        path: the PNG file to write (parent folders are created).
        names: the ``K`` category names, for the legend.
        recall_thresholds: the ``R`` recall values; default ``linspace(0, 1, R)`` (COCO's 101).
        title: the plot title.

    Returns:
        The figure. The legend gives each curve's mean precision, which is its AP; the mean
        curve's ("all") is the mean AP over categories.
    """
    precision = np.asarray(precision, dtype=float)
    if precision.ndim != 2:
        raise ValueError(f"precision must have shape [R, K], got {precision.shape}")
    if len(names) != precision.shape[1]:
        raise ValueError(f"names must give one name per category ({precision.shape[1]}), got {len(names)}")
    recall = np.linspace(0.0, 1.0, precision.shape[0]) if recall_thresholds is None else np.asarray(recall_thresholds)
    if recall.shape != (precision.shape[0],):
        raise ValueError(f"recall_thresholds must have shape [{precision.shape[0]}], got {recall.shape}")

    valid = [k for k in range(precision.shape[1]) if (precision[:, k] > -1).all()]
    figure = Figure(figsize=(7, 5.5), layout="constrained")
    axes = figure.add_subplot()
    labelled = len(valid) <= _MAX_LABELLED
    for k, colour in zip(valid, distinct_colours(len(valid)), strict=True):
        curve = precision[:, k]
        if labelled:
            axes.plot(recall, curve, linewidth=1.2, color=colour, label=f"{names[k]} (AP {curve.mean():.3f})")
        else:
            axes.plot(recall, curve, linewidth=0.6, color="0.7")
    if valid:
        mean = precision[:, valid].mean(axis=1)
        axes.plot(recall, mean, linewidth=2.5, color="black", label=f"all (AP {mean.mean():.3f})")
        axes.legend(loc="lower left", fontsize="small")
    else:
        axes.text(0.5, 0.5, "no category has ground truth", ha="center", va="center")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    axes.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return figure
