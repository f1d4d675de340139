"""COCO evaluation (box AP/AR and keypoint OKS AP/AR) of sightkit predictions with faster-coco-eval.

faster-coco-eval is a C++ port of pycocotools' ``COCOeval`` that gives the same numbers; this
module only turns sightkit predictions into COCO result records, runs it, names its numbers
and gathers predictions across processes.

Predictions are one dict per image, the format sightkit's postprocessors return::

    {"boxes": Tensor[N, 4],      # xyxy, absolute pixels of the original image
     "scores": Tensor[N],
     "labels": Tensor[N],        # contiguous labels 0..C-1
     "keypoints": Tensor[N, K, 3]}  # (x, y, v) absolute pixels; only for iou_type="keypoints"

Labels map to COCO category ids through ``label_to_category``; by default label ``i`` is
the ``i``-th smallest category id of the ground truth (the convention of sightkit's COCO
datasets).

Reference: Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the metric
definitions are those of cocodataset.org/#detection-eval and #keypoints-eval.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from faster_coco_eval import COCO, COCOeval_faster
from matplotlib.figure import Figure
from rich.table import Table
from rich.text import Text
from torch import Tensor

from sightkit._api import export
from sightkit.eval.plots import plot_precision_recall
from sightkit.ops.boxes import box_convert

#: The names of COCO's summary numbers, in the order COCOeval computes them.
METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"),
}


def _quiet(*args: object, **kwargs: object) -> None:
    """faster-coco-eval reports progress through a print function; sightkit keeps it silent."""


@export("eval.CocoEvaluator")
class CocoEvaluator:
    """Accumulate predictions image by image, then compute COCO's AP/AR numbers.

    Usage::

        evaluator = CocoEvaluator("annotations/val.json", iou_type="bbox")
        for images, targets in loader:
            outputs = postprocess(model(images), sizes)
            evaluator.update({t["image_id"]: out for t, out in zip(targets, outputs)})
        metrics = evaluator.compute()  # {"AP": ..., "AP50": ..., ...}

    Under ``torchrun`` every rank calls :meth:`update` with its share of the images and then
    :meth:`compute` (or :meth:`synchronize`), which gathers the predictions of all ranks with
    ``torch.distributed.all_gather_object``; every rank then gets the same metrics. An image
    seen by several ranks (``DistributedSampler`` pads the last batch with repeats) counts once.
    With the NCCL backend, set each rank's CUDA device first (``torch.cuda.set_device``), as
    ``all_gather_object`` moves its buffers to the current device.

    Only the images passed to :meth:`update` are evaluated (so a partial pass gives honest
    numbers); an image passed with no detections counts its ground truth as missed.

    Args:
        ground_truth: a COCO JSON path, a COCO dict or a ``faster_coco_eval.COCO``.
        iou_type: ``"bbox"`` (box IoU; 12 numbers) or ``"keypoints"`` (OKS; 10 numbers).
        label_to_category: the category id of each label: a sequence (label ``i`` ->
            ``seq[i]``) or a mapping; default: the sorted category ids of ``ground_truth``.
        kpt_oks_sigmas: per-keypoint OKS sigmas for ``"keypoints"``; default COCO's 17.
    """

    def __init__(
        self,
        ground_truth: str | os.PathLike[str] | dict[str, Any] | COCO,
        iou_type: str = "bbox",
        label_to_category: Sequence[int] | Mapping[int, int] | None = None,
        *,
        kpt_oks_sigmas: Sequence[float] | None = None,
    ) -> None:
        if iou_type not in METRIC_NAMES:
            raise ValueError(f"iou_type must be one of {tuple(METRIC_NAMES)}, got {iou_type!r}")
        self.iou_type = iou_type
        self.coco_gt = _load_ground_truth(ground_truth)
        self.label_to_category = _label_map(label_to_category, sorted(self.coco_gt.getCatIds()))
        self.kpt_oks_sigmas = None if kpt_oks_sigmas is None else [float(s) for s in kpt_oks_sigmas]
        self._num_keypoints = 17 if self.kpt_oks_sigmas is None else len(self.kpt_oks_sigmas)
        self._results: dict[int, list[dict[str, Any]]] = {}
        self._synchronized = True
        self._eval: COCOeval_faster | None = None

    @property
    def category_to_label(self) -> dict[int, int]:
        """The inverse of ``label_to_category``."""
        return {category: label for label, category in self.label_to_category.items()}

    @property
    def image_ids(self) -> list[int]:
        """The ids of the images added so far, sorted."""
        return sorted(self._results)

    def reset(self) -> None:
        """Forget every prediction (start a new evaluation pass)."""
        self._results = {}
        self._synchronized = True
        self._eval = None

    def update(self, predictions: Mapping[int, Mapping[str, Tensor]]) -> None:
        """Add the predictions of some images: ``{image_id: prediction dict}`` (see the module
        docstring). An image with no detections is passed with empty tensors.

        Raises:
            ValueError: an image id not in the ground truth or already added, a missing key,
                inconsistent shapes, non-finite values, or a label without a category.
        """
        converted = {}
        for key, prediction in predictions.items():
            image_id = int(key)
            if image_id not in self.coco_gt.imgs:
                raise ValueError(f"predictions: image_id {image_id} is not in the ground truth")
            if image_id in self._results or image_id in converted:
                raise ValueError(f"predictions: image_id {image_id} was already added; call reset() to start over")
            converted[image_id] = self._to_records(image_id, prediction)
        self._results.update(converted)
        self._synchronized = False

    def synchronize(self) -> None:
        """Gather the predictions of all ranks (a collective call when ``torch.distributed`` is
        initialised with more than one process; nothing to do otherwise)."""
        if self._synchronized:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[dict[int, list[dict[str, Any]]] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self._results)
            merged: dict[int, list[dict[str, Any]]] = {}
            for rank_results in gathered:
                for image_id, records in (rank_results or {}).items():
                    merged.setdefault(image_id, records)  # a padded repeat counts once
            self._results = merged
        self._synchronized = True

    def compute(self) -> dict[str, float]:
        """Run COCO evaluation on the images added so far (all ranks' after :meth:`synchronize`).

        Returns:
            COCO's summary numbers by name (``METRIC_NAMES[iou_type]``): for ``"bbox"`` AP
            (IoU .50:.95), AP50, AP75, APs/APm/APl (area < 32², < 96², larger), AR1, AR10,
            AR100 (recall with at most 1/10/100 detections per image), ARs, ARm, ARl; for
            ``"keypoints"`` AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl (at most 20
            detections per image). A number is -1 when no ground truth falls in its range
            (COCO's convention).

        Raises:
            RuntimeError: nothing was added with :meth:`update`.
        """
        self.synchronize()
        if not self._results:
            raise RuntimeError("no predictions to evaluate: call update() before compute()")
        # loadRes adds fields to the records it is given, so it gets copies.
        records = [dict(record) for records in self._results.values() for record in records]
        coco_dt = self.coco_gt.loadRes(records)
        evaluator = COCOeval_faster(
            self.coco_gt, coco_dt, self.iou_type, print_function=_quiet, kpt_oks_sigmas=self.kpt_oks_sigmas
        )
        evaluator.params.imgIds = self.image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        self._eval = evaluator
        names = METRIC_NAMES[self.iou_type]
        return {name: float(value) for name, value in zip(names, evaluator.stats[: len(names)], strict=True)}

    @property
    def precision(self) -> np.ndarray:
        """COCO's interpolated precision ``[T, R, K, A, M]`` from the last :meth:`compute`:
        IoU (or OKS) thresholds x 101 recall thresholds x categories (sorted ids) x area
        ranges (all first) x max-detection limits; -1 where a category has no ground truth."""
        return self._evaluated().eval["precision"]

    def per_class_ap(self) -> list[dict[str, Any]]:
        """AP per category from the last :meth:`compute`: dicts with ``category_id``, ``label``
        (``None`` when no label maps to it), ``name``, ``gt`` (ground-truth instances, not
        crowd, in the evaluated images), ``AP`` (.50:.95), ``AP50`` and ``AP75``; -1 for a
        category without ground truth."""
        evaluator = self._evaluated()
        params = evaluator.params
        precision = evaluator.eval["precision"][:, :, :, 0, -1]  # area "all", largest max-detections
        evaluated = set(params.imgIds)
        gt_counts: dict[int, int] = {}
        for ann in self.coco_gt.anns.values():
            if ann["image_id"] in evaluated and not ann.get("iscrowd", 0):
                gt_counts[ann["category_id"]] = gt_counts.get(ann["category_id"], 0) + 1
        labels = self.category_to_label
        rows = []
        for k, category_id in enumerate(params.catIds):
            row = {
                "category_id": int(category_id),
                "label": labels.get(int(category_id)),
                "name": self.coco_gt.cats[category_id].get("name", str(category_id)),
                "gt": gt_counts.get(int(category_id), 0),
            }
            for name, thresholds in (
                ("AP", slice(None)),
                ("AP50", _at(params.iouThrs, 0.5)),
                ("AP75", _at(params.iouThrs, 0.75)),
            ):
                values = precision[thresholds, :, k]
                valid = values[values > -1]
                row[name] = float(valid.mean()) if valid.size else -1.0
            rows.append(row)
        return rows

    def per_class_table(self) -> Table:
        """:meth:`per_class_ap` as a rich table."""
        table = Table(title=f"COCO {self.iou_type} AP per category")
        for column in ("category", "id", "label", "gt", "AP", "AP50", "AP75"):
            table.add_column(column, justify="left" if column == "category" else "right")
        for row in self.per_class_ap():
            label = "-" if row["label"] is None else str(row["label"])
            aps = ["-" if row[k] < 0 else f"{row[k]:.3f}" for k in ("AP", "AP50", "AP75")]
            table.add_row(Text(str(row["name"])), str(row["category_id"]), label, str(row["gt"]), *aps)
        return table

    def plot_precision_recall(self, path: str | os.PathLike[str], iou: float | None = 0.5) -> Figure:
        """Write the precision-recall curves of the last :meth:`compute` to a PNG.

        Args:
            path: the image file to write.
            iou: the IoU (or OKS) threshold of the curves, one of 0.50, 0.55, ..., 0.95;
                ``None`` averages the curves over all thresholds (the curve of AP .50:.95).

        Returns:
            The matplotlib figure (also saved to ``path``).
        """
        evaluator = self._evaluated()
        precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
        thresholds = evaluator.params.iouThrs
        kind = "OKS" if self.iou_type == "keypoints" else "IoU"
        if iou is None:
            curves = precision.mean(axis=0)
            curves[(precision < 0).any(axis=0)] = -1  # a category without ground truth stays marked
            what = f"{kind} {thresholds[0]:.2f}:{thresholds[-1]:.2f}"
        else:
            curves = precision[_at(thresholds, iou, "iou")]
            what = f"{kind} {iou:.2f}"
        return plot_precision_recall(
            curves,
            path,
            names=[self.coco_gt.cats[c].get("name", str(c)) for c in evaluator.params.catIds],
            recall_thresholds=evaluator.params.recThrs,
            title=f"COCO {self.iou_type} precision-recall, {what}",
        )

    def _evaluated(self) -> COCOeval_faster:
        if self._eval is None:
            raise RuntimeError("no evaluation yet: call compute() first")
        return self._eval

    def _to_records(self, image_id: int, prediction: Mapping[str, Tensor]) -> list[dict[str, Any]]:
        keys = ("scores", "labels", "keypoints") if self.iou_type == "keypoints" else ("boxes", "scores", "labels")
        tensors = {}
        for key in keys:
            value = prediction.get(key) if isinstance(prediction, Mapping) else None
            if not isinstance(value, Tensor):
                raise ValueError(
                    f"predictions[{image_id}] must be a dict with tensors {keys}; {key!r} is {type(value).__name__}"
                )
            tensors[key] = value.detach().cpu()
        scores, labels = tensors["scores"], tensors["labels"]
        count = scores.shape[0] if scores.ndim == 1 else -1
        expected = {
            "scores": (count,),
            "labels": (count,),
            "boxes": (count, 4),
            "keypoints": (count, self._num_keypoints, 3),
        }
        for key, value in tensors.items():
            if count < 0 or tuple(value.shape) != expected[key]:
                shapes = {
                    "scores": "[N]",
                    "labels": "[N]",
                    "boxes": "[N, 4]",
                    "keypoints": f"[N, {self._num_keypoints}, 3]",
                }
                want = ", ".join(f"{k} {shapes[k]}" for k in keys)
                got = ", ".join(f"{k} {list(v.shape)}" for k, v in tensors.items())
                hint = " (K is the number of kpt_oks_sigmas)" if key == "keypoints" else ""
                raise ValueError(f"predictions[{image_id}]: expected {want}; got {got}{hint}")
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise ValueError(f"predictions[{image_id}]: {key!r} has non-finite values")
        if labels.is_floating_point():
            raise ValueError(f"predictions[{image_id}]: 'labels' must be an integer tensor, got {labels.dtype}")
        unknown = sorted(set(labels.tolist()) - set(self.label_to_category))
        if unknown:
            raise ValueError(
                f"predictions[{image_id}]: labels {unknown} have no category; "
                f"label_to_category knows labels {sorted(self.label_to_category)}"
            )
        categories = [self.label_to_category[label] for label in labels.tolist()]
        if self.iou_type == "keypoints":
            geometry = ("keypoints", tensors["keypoints"].double().flatten(1).tolist())
        else:
            geometry = ("bbox", box_convert(tensors["boxes"].double(), "xyxy", "xywh").tolist())
        return [
            {"image_id": image_id, "category_id": category, "score": score, geometry[0]: values}
            for category, score, values in zip(categories, scores.double().tolist(), geometry[1], strict=True)
        ]


@export("eval.evaluate_coco")
def evaluate_coco(
    ground_truth: str | os.PathLike[str] | dict[str, Any] | COCO,
    predictions: Mapping[int, Mapping[str, Tensor]],
    iou_type: str = "bbox",
    label_to_category: Sequence[int] | Mapping[int, int] | None = None,
    *,
    kpt_oks_sigmas: Sequence[float] | None = None,
) -> dict[str, float]:
    """COCO metrics of ``{image_id: prediction dict}`` in one call; see :class:`CocoEvaluator`."""
    evaluator = CocoEvaluator(ground_truth, iou_type, label_to_category, kpt_oks_sigmas=kpt_oks_sigmas)
    evaluator.update(predictions)
    return evaluator.compute()


def _load_ground_truth(ground_truth: str | os.PathLike[str] | dict[str, Any] | COCO) -> COCO:
    if isinstance(ground_truth, COCO):
        return ground_truth
    if isinstance(ground_truth, dict):
        # Evaluation writes fields into the annotation dicts; the caller's dict stays untouched.
        return COCO(copy.deepcopy(ground_truth), print_function=_quiet)
    if isinstance(ground_truth, str | os.PathLike):
        if not Path(ground_truth).is_file():
            raise FileNotFoundError(f"ground_truth: COCO JSON file not found: {ground_truth}")
        return COCO(str(ground_truth), print_function=_quiet)
    raise TypeError(
        f"ground_truth must be a COCO JSON path, a COCO dict or a COCO object, got {type(ground_truth).__name__}"
    )


def _label_map(label_to_category: Sequence[int] | Mapping[int, int] | None, category_ids: list[int]) -> dict[int, int]:
    if label_to_category is None:
        return dict(enumerate(category_ids))
    if isinstance(label_to_category, Mapping):
        mapping = {int(label): int(category) for label, category in label_to_category.items()}
    else:
        mapping = {label: int(category) for label, category in enumerate(label_to_category)}
    unknown = sorted(set(mapping.values()) - set(category_ids))
    if unknown:
        raise ValueError(f"label_to_category: category ids {unknown} are not in the ground truth's {category_ids}")
    if len(set(mapping.values())) != len(mapping):
        raise ValueError(f"label_to_category must map each label to a different category, got {mapping}")
    return mapping


def _at(thresholds: np.ndarray, value: float, name: str = "threshold") -> int:
    """The index of ``value`` among COCO's thresholds (compared with a tolerance: they come from linspace)."""
    hits = np.flatnonzero(np.isclose(thresholds, value))
    if hits.size == 0:
        raise ValueError(f"{name} must be one of {np.round(thresholds, 2).tolist()}, got {value!r}")
    return int(hits[0])
