"""Per-image, per-class NMS over a batch, as one operator that exports to ONNX's NonMaxSuppression.

Deployed detectors need their NMS inside the exported graph. ONNX has one NMS operator,
``NonMaxSuppression``, which already works per image and per class (boxes ``[B, N, 4]``, scores
``[B, C, N]``, output rows ``(image, class, box)``); torchvision's ``nms`` has no ONNX translation
in torch's dynamo exporter, and a Python loop over images cannot have a dynamic batch. So this
file declares ``sightkit::multiclass_nms`` as a torch custom operator with those semantics: in
eager mode it runs torchvision's C++ kernel per image and class, and the exporter replaces it by
``NonMaxSuppression`` through :data:`ONNX_TRANSLATIONS` (the values agree exactly; tested).
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import Tensor

from sightkit._api import export


@torch.library.custom_op("sightkit::multiclass_nms", mutates_args=())
def _multiclass_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    rows = []
    for image in range(scores.shape[0]):
        for label in range(scores.shape[1]):
            candidates = torch.nonzero(scores[image, label] > score_threshold).squeeze(1)
            order = torchvision.ops.nms(boxes[image, candidates], scores[image, label, candidates], iou_threshold)
            kept = candidates[order]
            rows.append(torch.stack((torch.full_like(kept, image), torch.full_like(kept, label), kept), dim=1))
    if not rows:
        return torch.empty(0, 3, dtype=torch.int64, device=boxes.device)
    return torch.cat(rows)


@_multiclass_nms.register_fake
def _(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty(kept, 3, dtype=torch.int64)


@export("ops.multiclass_nms")
def multiclass_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float = 0.0) -> Tensor:
    """Greedy NMS within each image and each class, keeping only scores above ``score_threshold``
    (the semantics of ONNX's ``NonMaxSuppression``, to which it exports).

    Args:
        boxes: ``[B, N, 4]`` ``xyxy``, shared by every class of an image.
        scores: ``[B, C, N]`` score of each box for each class.
        iou_threshold: a box whose IoU with a kept box of its image and class exceeds it is dropped.
        score_threshold: boxes scoring at most this for a class are not candidates of that class.

    Returns:
        ``[K, 3]`` int64 rows ``(image, class, box index)``, grouped by image then class, by
        decreasing score within a group.
    """
    if not isinstance(boxes, Tensor) or boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [B, N, 4], got {getattr(boxes, 'shape', type(boxes).__name__)}")
    if not isinstance(scores, Tensor) or scores.ndim != 3 or (scores.shape[0], scores.shape[2]) != boxes.shape[:2]:
        raise ValueError(
            f"scores must have shape [B, C, N] with B, N = {tuple(boxes.shape[:2])}, "
            f"got {getattr(scores, 'shape', type(scores).__name__)}"
        )
    return _multiclass_nms(boxes.float(), scores.float(), float(iou_threshold), float(score_threshold))


def _onnx_multiclass_nms(boxes: Any, scores: Any, iou_threshold: float, score_threshold: float) -> Any:
    from onnxscript import opset18 as op

    max_per_class = op.Constant(value_ints=[2**31 - 1])
    return op.NonMaxSuppression(
        boxes,
        scores,
        max_per_class,
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
    )


#: ``custom_translation_table`` entries for ``torch.onnx.export(..., dynamo=True)``.
ONNX_TRANSLATIONS = {torch.ops.sightkit.multiclass_nms.default: _onnx_multiclass_nms}
