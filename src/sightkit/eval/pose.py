"""Pose evaluation: COCO keypoint AP (OKS), PCK and a per-keypoint error table.

COCO's keypoint AP/AR (object keypoint similarity with per-keypoint sigmas, 17 for COCO
people) comes from :class:`sightkit.eval.CocoEvaluator` with ``iou_type="keypoints"``
(faster-coco-eval). When every prediction belongs to a known ground-truth person (top-down
evaluation with ground-truth boxes), two direct measures of localisation are added:

- PCK@t (percentage of correct keypoints): a labelled keypoint is correct when its error,
  divided per axis by the person box's width and height, has a norm below ``t`` (mmpose's
  box-normalised PCK; 0.05 is its usual threshold);
- per keypoint: how many were labelled, the mean and median error in image pixels, the mean
  box-normalised error and the PCK.

Reference: Andriluka et al., "2D Human Pose Estimation: New Benchmark and State of the Art
Analysis", CVPR 2014 (PCK); cocodataset.org/#keypoints-eval (OKS AP).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from faster_coco_eval import COCO
from rich.table import Table
from rich.text import Text
from torch import Tensor

from sightkit._api import export
from sightkit.eval.coco import CocoEvaluator
from sightkit.ops.keypoints import COCO_KEYPOINT_SIGMAS, oks_nms


def _check_pair(pred: Tensor, truth: Tensor, normalizer: Tensor) -> Tensor:
    if pred.ndim != 3 or pred.shape[-1] < 2 or truth.shape[:2] != pred.shape[:2] or truth.shape[-1] != 3:
        raise ValueError(
            f"pred must be [N, K, 2|3] and truth [N, K, 3] (x, y, visibility) with the same N, K; got "
            f"{tuple(pred.shape)} and {tuple(truth.shape)}"
        )
    normalizer = torch.as_tensor(normalizer, dtype=torch.float64)
    if normalizer.shape == pred.shape[:1]:
        normalizer = normalizer[:, None].expand(-1, 2)
    if normalizer.shape != (pred.shape[0], 2):
        raise ValueError(
            f"normalizer must be [N] or [N, 2] (e.g. box width and height) with N = {pred.shape[0]}, "
            f"got {tuple(normalizer.shape)}"
        )
    if normalizer.numel() and not bool((normalizer > 0).all()):
        raise ValueError("normalizer must be > 0 everywhere (a degenerate box?)")
    return normalizer


def _errors(pred: Tensor, truth: Tensor, normalizer: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel errors ``[N, K]``, normalised errors ``[N, K]`` and the labelled mask ``[N, K]``."""
    normalizer = _check_pair(pred, truth, normalizer)
    delta = pred[..., :2].double() - truth[..., :2].double()
    return delta.norm(dim=-1), (delta / normalizer[:, None, :]).norm(dim=-1), truth[..., 2] > 0


@export("eval.pck")
def pck(pred: Tensor, truth: Tensor, normalizer: Tensor, threshold: float = 0.05) -> tuple[Tensor, float]:
    """Percentage of correct keypoints.

    Args:
        pred: ``[N, K, 2|3]`` predicted keypoints (pixels).
        truth: ``[N, K, 3]`` ground truth with COCO visibility; only ``v > 0`` counts.
        normalizer: ``[N, 2]`` per-axis scales (the box's width and height) or ``[N]``.
        threshold: a keypoint is correct when ``|error / normalizer| < threshold``.

    Returns:
        Per keypoint ``[K]`` (NaN where no keypoint of that type is labelled) and over all
        labelled keypoints (NaN when none is).
    """
    _, normalised, labelled = _errors(pred, truth, normalizer)
    correct = (normalised < threshold) & labelled
    counts = labelled.sum(0)
    per_keypoint = torch.where(counts > 0, correct.sum(0) / counts.clamp(min=1), torch.nan)
    total = labelled.sum()
    return per_keypoint.float(), float(correct.sum() / total) if total else float("nan")


@export("eval.keypoint_errors")
def keypoint_errors(
    pred: Tensor,
    truth: Tensor,
    normalizer: Tensor,
    names: Sequence[str],
    threshold: float = 0.05,
) -> list[dict[str, Any]]:
    """One row per keypoint type: ``name``, ``labelled`` (count), ``mean_px`` and
    ``median_px`` (error in pixels), ``mean_norm`` (box-normalised) and ``pck`` (at
    ``threshold``); NaN where nothing is labelled. Arguments as :func:`pck`."""
    pixels, normalised, labelled = _errors(pred, truth, normalizer)
    if len(names) != pred.shape[1]:
        raise ValueError(f"names must name the {pred.shape[1]} keypoints, got {len(names)} names")
    per_keypoint, _ = pck(pred, truth, normalizer, threshold)
    rows = []
    for k, name in enumerate(names):
        mask = labelled[:, k]
        count = int(mask.sum())
        pick = pixels[mask, k]
        rows.append(
            {
                "name": name,
                "labelled": count,
                "mean_px": float(pick.mean()) if count else float("nan"),
                "median_px": float(pick.median()) if count else float("nan"),
                "mean_norm": float(normalised[mask, k].mean()) if count else float("nan"),
                "pck": float(per_keypoint[k]),
            }
        )
    return rows


@export("eval.keypoint_error_table")
def keypoint_error_table(rows: Sequence[dict[str, Any]], threshold: float = 0.05, title: str = "") -> Table:
    """:func:`keypoint_errors` as a rich table."""
    table = Table(title=title or "keypoint errors (ground-truth boxes)")
    for column in ("keypoint", "labelled", "mean px", "median px", "mean / box", f"PCK@{threshold:g}"):
        table.add_column(column, justify="left" if column == "keypoint" else "right")
    for row in rows:
        values = [row["mean_px"], row["median_px"], row["mean_norm"], row["pck"]]
        shown = [
            "-" if math.isnan(value) else f"{value:.{digits}f}"
            for value, digits in zip(values, (2, 2, 4, 3), strict=True)
        ]
        table.add_row(Text(str(row["name"])), str(row["labelled"]), *shown)
    return table


@export("eval.PoseEvaluator")
class PoseEvaluator:
    """Accumulate top-down pose predictions person by person, then compute COCO keypoint
    AP/AR and, when the ground truth of each person is known, PCK and per-keypoint errors.

    Usage::

        evaluator = PoseEvaluator("annotations/val.json", keypoint_names)
        for crops, targets in loader:
            keypoints, scores = ...  # [B, K, 3] image pixels (x, y, score), [B]
            evaluator.update(targets["image_id"], keypoints, scores, targets["area"],
                             targets["box"], targets["image_keypoints"])
        metrics = evaluator.compute()  # {"AP": ..., "PCK": ..., "EPE": ...}

    Under ``torchrun`` every rank updates with its share; :meth:`compute` gathers all ranks'
    predictions (a collective call) and every rank gets the same metrics.

    Args:
        ground_truth: the COCO keypoints JSON (path, dict or ``faster_coco_eval.COCO``).
        keypoint_names: the ``K`` names, for the per-keypoint table.
        category_id: the person category's id (default: the only category, or the first with keypoints).
        sigmas: per-keypoint OKS sigmas (default COCO's 17).
        oks_nms_threshold: with detector boxes, drop poses of an image whose OKS with a
            better-scoring pose exceeds this (SimpleBaseline: 0.9); ``None``: keep all.
        pck_threshold: the PCK threshold (box-normalised).
    """

    def __init__(
        self,
        ground_truth: str | os.PathLike[str] | dict[str, Any] | COCO,
        keypoint_names: Sequence[str],
        *,
        category_id: int | None = None,
        sigmas: Sequence[float] | None = None,
        oks_nms_threshold: float | None = None,
        pck_threshold: float = 0.05,
    ) -> None:
        self.keypoint_names = list(keypoint_names)
        if sigmas is None and len(self.keypoint_names) != len(COCO_KEYPOINT_SIGMAS):
            raise ValueError(
                f"sigmas are needed for {len(self.keypoint_names)} keypoints (COCO's default has 17): "
                "give one OKS sigma per keypoint"
            )
        self.sigmas = list(COCO_KEYPOINT_SIGMAS if sigmas is None else sigmas)
        self.coco = CocoEvaluator(ground_truth, "keypoints", kpt_oks_sigmas=self.sigmas)
        if category_id is None:
            with_keypoints = [c for c, info in self.coco.coco_gt.cats.items() if info.get("keypoints")]
            category_id = (with_keypoints or sorted(self.coco.coco_gt.cats))[0]
        self.category_id = int(category_id)
        self.label = self.coco.category_to_label[self.category_id]
        self.oks_nms_threshold = oks_nms_threshold
        self.pck_threshold = pck_threshold
        self._people: list[dict[str, Tensor]] = []
        #: Per-keypoint error rows of the last :meth:`compute` (empty without ground truth).
        self.rows: list[dict[str, Any]] = []

    def update(
        self,
        image_ids: Tensor | Sequence[int],
        keypoints: Tensor,
        scores: Tensor,
        areas: Tensor,
        boxes: Tensor,
        truth: Tensor | None = None,
    ) -> None:
        """Add ``B`` people: ``image_ids`` ``[B]``, ``keypoints`` ``[B, K, 3]`` image pixels
        with per-keypoint scores, ``scores`` ``[B]`` (the person's), ``areas`` ``[B]``,
        ``boxes`` ``[B, 4]`` ``xyxy``, and ``truth`` ``[B, K, 3]`` when each person's ground
        truth is known (all-zero rows, from detector boxes, are left out of PCK)."""
        keypoints = keypoints.detach().cpu().float()
        count = keypoints.shape[0]
        if keypoints.ndim != 3 or keypoints.shape[1:] != (len(self.keypoint_names), 3):
            raise ValueError(
                f"keypoints must be [B, {len(self.keypoint_names)}, 3] (x, y, score), got {tuple(keypoints.shape)}"
            )
        person = {
            "image_id": torch.as_tensor(image_ids).reshape(-1).cpu().long(),
            "keypoints": keypoints,
            "score": scores.detach().reshape(-1).cpu().float(),
            "area": areas.detach().reshape(-1).cpu().float(),
            "box": boxes.detach().reshape(-1, 4).cpu().float(),
        }
        if truth is not None:
            person["truth"] = truth.detach().cpu().float()
        for key, value in person.items():
            if value.shape[0] != count:
                raise ValueError(f"{key} must have one entry per person ({count}), got shape {tuple(value.shape)}")
        self._people.append(person)

    def _gathered(self) -> dict[str, Tensor]:
        people = self._people
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            everyone: list[list[dict[str, Tensor]] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, people)
            people = [person for rank in everyone for person in rank or []]
        if not people:
            raise RuntimeError("no predictions to evaluate: call update() before compute()")
        keys = set.intersection(*(set(p) for p in people))
        return {key: torch.cat([p[key] for p in people]) for key in keys}

    def compute(self) -> dict[str, float]:
        """COCO keypoint AP/AR (``AP``, ``AP50``, ..., ``ARl``), plus ``PCK`` and ``EPE`` (mean
        end-point error in pixels) when ground truth was given for every person."""
        people = self._gathered()
        predictions: dict[int, dict[str, Tensor]] = {}
        for image_id in people["image_id"].unique().tolist():
            index = torch.nonzero(people["image_id"] == image_id).ravel()
            keypoints, scores = people["keypoints"][index], people["score"][index]
            if self.oks_nms_threshold is not None:
                kept = oks_nms(keypoints, scores, people["area"][index], self.oks_nms_threshold, self.sigmas)
                keypoints, scores = keypoints[kept], scores[kept]
            labels = torch.full((len(scores),), self.label, dtype=torch.int64)
            predictions[image_id] = {"keypoints": keypoints, "scores": scores, "labels": labels}
        self.coco.reset()
        self.coco.update(predictions)
        metrics = self.coco.compute()
        self.rows = []
        if "truth" in people:
            known = people["truth"][..., 2].gt(0).any(-1)
            if known.any():
                pred, truth, box = people["keypoints"][known], people["truth"][known], people["box"][known]
                size = (box[:, 2:] - box[:, :2]).clamp(min=1e-6)
                _, metrics["PCK"] = pck(pred, truth, size, self.pck_threshold)
                pixels, _, labelled = _errors(pred, truth, size)
                metrics["EPE"] = float(pixels[labelled].mean())
                self.rows = keypoint_errors(pred, truth, size, self.keypoint_names, self.pck_threshold)
        return metrics

    def per_keypoint_table(self) -> Table:
        """The per-keypoint error table of the last :meth:`compute` (empty without ground truth)."""
        return keypoint_error_table(self.rows, self.pck_threshold)
