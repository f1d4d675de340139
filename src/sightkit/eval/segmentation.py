"""Semantic segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel accuracy.

The confusion matrix ``M`` is ``[C, C]`` int64 with ``M[t, p]`` the number of pixels of true
class ``t`` predicted as ``p``; pixels whose target is ``ignore_index`` are not counted.
From it, for class ``c`` (``TP = M[c, c]``, ``FN`` the rest of row ``c``, ``FP`` the rest
of column ``c``)::

    IoU_c      = TP / (TP + FP + FN)          (Jaccard; Everingham et al., Pascal VOC, IJCV 2010)
    accuracy_c = TP / (TP + FN)               (recall of class c)
    mIoU       = mean of IoU_c over the classes that occur in target or prediction
    pixel accuracy = trace(M) / sum(M)

A class with ``TP + FP + FN = 0`` has no defined IoU (NaN) and is left out of the means, as
in mmsegmentation and torchmetrics' ``JaccardIndex(average="macro")`` with absent classes
ignored. Summing matrices is exact, so accumulating over batches and all-reducing over
processes gives the same numbers as one pass over the whole set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from matplotlib.figure import Figure
from rich.table import Table
from rich.text import Text
from torch import Tensor

from sightkit._api import export


def _check_labels(name: str, labels: Tensor) -> None:
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex():
        got = f"dtype {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"{name} must be an integer tensor of class indices, got {got}")


@export("eval.confusion_matrix")
def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """The ``[C, C]`` int64 confusion matrix (rows: target class, columns: predicted class).

    Args:
        pred: predicted class indices in ``[0, C)``, any shape (e.g. ``[B, H, W]``).
        target: true class indices of the same shape, in ``[0, C)`` or ``ignore_index``.
        num_classes: ``C``.
        ignore_index: target value of pixels that are not counted.

    Raises:
        ValueError: shapes differ, or a value is out of range.
    """
    _check_labels("pred", pred)
    _check_labels("target", target)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    valid = target != ignore_index
    pred, target = pred[valid].long(), target[valid].long()
    for name, values in (("pred", pred), ("target", target)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            extra = f" or ignore_index={ignore_index}" if name == "target" else ""
            raise ValueError(
                f"{name} values must be in [0, {num_classes}){extra}, "
                f"got values in [{int(values.min())}, {int(values.max())}]"
            )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


@export("eval.segmentation_metrics")
def segmentation_metrics(confusion: Tensor | np.ndarray) -> dict[str, float | list[float]]:
    """mIoU, per-class IoU and accuracy, pixel accuracy and mean accuracy of a confusion matrix.

    Returns:
        ``{"mIoU", "pixel_accuracy", "mean_accuracy"}`` as floats (NaN when nothing was
        counted) and ``"IoU"``, ``"accuracy"`` as lists of ``C`` floats (NaN for a class that
        occurs in neither target nor prediction, resp. not in the target).
    """
    matrix = torch.as_tensor(confusion).detach().cpu().to(torch.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix, got shape {tuple(matrix.shape)}")
    true_positive = matrix.diagonal()
    per_target = matrix.sum(1)
    union = per_target + matrix.sum(0) - true_positive
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, true_positive / union, nan)
    accuracy = torch.where(per_target > 0, true_positive / per_target, nan)
    total = matrix.sum()
    return {
        "mIoU": float(iou.nanmean()),
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
        "mean_accuracy": float(accuracy.nanmean()),
        "IoU": iou.tolist(),
        "accuracy": accuracy.tolist(),
    }


@export("eval.SegmentationEvaluator")
class SegmentationEvaluator:
    """Accumulate a confusion matrix batch by batch, then compute the metrics.

    Usage::

        evaluator = SegmentationEvaluator(num_classes=6, class_names=names)
        for images, masks in loader:
            evaluator.update(model(images).argmax(1), masks)
        metrics = evaluator.compute()  # {"mIoU": ..., "pixel_accuracy": ..., "mean_accuracy": ...}

    Under ``torchrun`` every rank updates with its share of the images; :meth:`compute` (or
    :meth:`synchronize`) sums the matrices of all ranks with one ``all_reduce``, so every
    rank gets the metrics of the whole set. The matrix lives on the device of the first
    update (a CUDA device for NCCL).

    Args:
        num_classes: ``C``.
        ignore_index: target value of pixels that are not counted.
        class_names: ``C`` names for the tables and plots; default ``"0"``, ``"1"``, ...
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names must give {num_classes} names, got {len(class_names)}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        """Start a new evaluation pass."""
        self.confusion: Tensor | None = None
        self._synchronized = True

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count the pixels of a batch: ``pred`` and ``target`` class indices of one shape."""
        counts = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.confusion = counts if self.confusion is None else self.confusion + counts.to(self.confusion.device)
        self._synchronized = False

    def synchronize(self) -> None:
        """Sum the matrices of all ranks (a collective call under ``torch.distributed`` with
        more than one process, which every rank must make; nothing to do otherwise)."""
        if self._synchronized:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # A rank whose shard was empty still takes part, with zeros.
            if self.confusion is None:
                self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
            dist.all_reduce(self.confusion, op=dist.ReduceOp.SUM)
        self._synchronized = True

    @property
    def matrix(self) -> Tensor:
        """The ``[C, C]`` confusion matrix counted so far (all ranks' after :meth:`synchronize`)."""
        if self.confusion is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self.confusion

    def compute(self) -> dict[str, float]:
        """``{"mIoU", "pixel_accuracy", "mean_accuracy"}`` over every rank's pixels."""
        self.synchronize()
        metrics = segmentation_metrics(self.matrix)
        return {key: metrics[key] for key in ("mIoU", "pixel_accuracy", "mean_accuracy")}

    def per_class(self) -> list[dict[str, float | str | int]]:
        """One row per class: name, IoU, accuracy and the number of target pixels."""
        self.synchronize()
        metrics = segmentation_metrics(self.matrix)
        pixels = self.matrix.sum(1).tolist()
        return [
            {"name": name, "IoU": iou, "accuracy": accuracy, "pixels": int(count)}
            for name, iou, accuracy, count in zip(
                self.class_names, metrics["IoU"], metrics["accuracy"], pixels, strict=True
            )
        ]

    def per_class_table(self) -> Table:
        """:meth:`per_class` as a rich table (``-`` where a value is undefined)."""
        table = Table(title="segmentation metrics per class")
        for column in ("class", "IoU", "accuracy", "pixels"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in self.per_class():
            values = ["-" if np.isnan(row[key]) else f"{row[key]:.4f}" for key in ("IoU", "accuracy")]
            table.add_row(Text(str(row["name"])), *values, str(row["pixels"]))
        return table

    def plot_confusion(self, path: str | os.PathLike[str]) -> Figure:
        """Save the row-normalised confusion matrix (each row: where that class's pixels went)."""
        self.synchronize()
        return plot_confusion_matrix(self.matrix, self.class_names, path)


def plot_confusion_matrix(confusion: Tensor, names: Sequence[str], path: str | os.PathLike[str]) -> Figure:
    """Draw the row-normalised ``confusion`` with the fraction written in each cell; save it as PNG."""
    matrix = confusion.detach().cpu().to(torch.float64)
    rows = matrix.sum(1, keepdim=True)
    fractions = torch.where(rows > 0, matrix / rows.clamp_min(1), torch.zeros_like(matrix)).numpy()
    size = max(4.0, 0.6 * len(names) + 2)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="fraction of the true class's pixels")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(names) <= 20:
        for (row, col), value in np.ndenumerate(fractions):
            color = "white" if value > 0.5 else "black"
            axes.text(col, row, f"{value:.2f}", ha="center", va="center", color=color, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return figure
