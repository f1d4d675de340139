"""A detector with its postprocess inside, for export: images in, final boxes, scores and labels out.

A deployed graph should need nothing of sightkit: :class:`DeployDetector` takes a batch of
normalised images and returns, per image, the ``top_k`` best detections as boxes in the input's
pixels, with the same selection rule as the family's postprocess:

- ``"softmax"`` (DETR, :func:`detr_postprocess`): each query's most likely real class, the
  ``top_k`` best queries;
- ``"sigmoid"`` (DINO, Deformable DETR, :func:`dino_postprocess`): the ``top_k`` best
  (query, class) pairs;
- ``"nms"`` (VarifocalNet, :func:`vfnet_postprocess`): the ``pre_nms_top_k`` best (location,
  class) pairs above ``score_threshold``, per-class NMS (:func:`multiclass_nms`, ONNX's
  ``NonMaxSuppression`` once exported), the ``top_k`` best survivors.

Outputs have a fixed ``top_k`` per image so that a batch is one tensor; slots without a
detection have score 0 and label -1 (``"nms"`` only: the top-k rules always fill every slot).

The graph pads the images at the bottom and right to a multiple of ``size_divisible`` and
hands the model the padding mask, exactly as the predictors do before calling the model, so
that a deployed graph takes images of any size and gives the predictor's numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.models.detr_postprocess import detr_postprocess
from sightkit.models.dino_postprocess import dino_postprocess
from sightkit.models.vfnet import VFNet
from sightkit.ops.boxes import box_convert
from sightkit.ops.multiclass_nms import multiclass_nms

KINDS = ("softmax", "sigmoid", "nms")

#: The deployable kind of each postprocess a detector family declares (its class's ``postprocess``).
POSTPROCESS_KINDS = {detr_postprocess: "softmax", dino_postprocess: "sigmoid", VFNet.postprocess: "nms"}


@export("models.deploy_kind")
def deploy_kind(model: nn.Module) -> str:
    """The :class:`DeployDetector` kind of ``model``'s declared postprocess (its class's
    ``postprocess``: :func:`detr_postprocess` -> ``"softmax"``, :func:`dino_postprocess` ->
    ``"sigmoid"``, :meth:`VFNet.postprocess` -> ``"nms"``).

    Raises:
        ValueError: the family declares no postprocess, or one with no deployable form.
    """
    declared = getattr(type(model), "postprocess", None)
    if declared not in POSTPROCESS_KINDS:
        raise ValueError(
            f"{type(model).__name__} declares postprocess={getattr(declared, '__qualname__', declared)!r}, which "
            f"has no deployable form; known: {', '.join(f.__qualname__ for f in POSTPROCESS_KINDS)}"
        )
    return POSTPROCESS_KINDS[declared]


def _pixel_boxes(pred_boxes: Tensor, height: int, width: int) -> Tensor:
    """Relative ``cxcywh`` -> ``xyxy`` in input pixels, clipped to the image."""
    x1, y1, x2, y2 = box_convert(pred_boxes.float(), "cxcywh", "xyxy").clamp(0, 1).unbind(-1)
    # Scalar products keep height and width symbolic when exported (a tensor made of them would fix them).
    return torch.stack((x1 * width, y1 * height, x2 * width, y2 * height), dim=-1)


@export("models.DeployDetector")
class DeployDetector(nn.Module):
    """``images [B, 3, H, W]`` (normalised) -> ``boxes [B, K, 4]`` ``xyxy`` in input pixels,
    ``scores [B, K]``, ``labels [B, K]`` int64, with ``K = top_k`` (module docstring).

    Args:
        model: a detector returning ``pred_logits`` and ``pred_boxes`` (relative ``cxcywh``).
        kind: ``"softmax"``, ``"sigmoid"`` or ``"nms"``: which postprocess the family uses.
        top_k: detections per image.
        score_threshold, pre_nms_top_k, iou_threshold: the ``"nms"`` kind's settings
            (:func:`vfnet_postprocess`).
        size_divisible: pad the images to a multiple of it, with the padding mask (1: no padding).
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        top_k: int = 100,
        score_threshold: float = 0.05,
        pre_nms_top_k: int = 1000,
        iou_threshold: float = 0.6,
        size_divisible: int = 32,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if top_k < 1 or pre_nms_top_k < 1:
            raise ValueError(f"top_k and pre_nms_top_k must be >= 1, got {top_k} and {pre_nms_top_k}")
        if size_divisible < 1:
            raise ValueError(f"size_divisible must be >= 1, got {size_divisible}")
        self.model, self.kind, self.top_k, self.size_divisible = model, kind, top_k, size_divisible
        self.score_threshold, self.pre_nms_top_k, self.iou_threshold = score_threshold, pre_nms_top_k, iou_threshold

    @classmethod
    def for_model(cls, model: nn.Module, top_k: int = 100, size_divisible: int = 32) -> DeployDetector:
        """``model`` with the postprocess its family declares (:func:`deploy_kind`) and, for the
        ``"nms"`` kind, the model's own thresholds.

        Raises:
            ValueError: no deployable postprocess, or a VFNet with DIoU-NMS (ONNX has IoU NMS only).
        """
        kind = deploy_kind(model)
        if kind != "nms":
            return cls(model, kind, top_k, size_divisible=size_divisible)
        if model.nms != "nms":
            raise ValueError(f"only IoU NMS deploys (ONNX NonMaxSuppression); this model has nms={model.nms!r}")
        return cls(model, kind, top_k, model.score_threshold, model.pre_nms_top_k, model.iou_threshold, size_divisible)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        height, width = images.shape[-2:]
        outputs = self.model(*self._padded(images))
        logits, boxes = outputs["pred_logits"].float(), _pixel_boxes(outputs["pred_boxes"], height, width)
        if self.kind == "softmax":
            scores, labels = logits.softmax(-1)[..., :-1].max(-1)
            scores, index = scores.topk(min(self.top_k, scores.shape[1]), dim=1)
            return boxes.gather(1, index[..., None].expand(-1, -1, 4)), scores, labels.gather(1, index)
        classes = logits.shape[-1]
        scores, index = logits.sigmoid().flatten(1).topk(min(self.top_k, logits.shape[1] * classes), dim=1)
        if self.kind == "sigmoid":
            return boxes.gather(1, (index // classes)[..., None].expand(-1, -1, 4)), scores, index % classes
        return self._nms(logits, boxes)

    def _padded(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images`` padded at the bottom and right to a multiple of ``size_divisible``, and the
        padding mask ``[B, H', W']`` (True on padding). The predictors' ``pad_images`` does the same
        for a list of differently sized images with Python loops; this one stays symbolic in the
        exported graph (the batch shares one size)."""
        height, width = images.shape[-2:]
        padded = F.pad(images, (0, -width % self.size_divisible, 0, -height % self.size_divisible))
        rows = torch.arange(padded.shape[-2], device=images.device) >= height
        columns = torch.arange(padded.shape[-1], device=images.device) >= width
        mask = (rows[:, None] | columns[None, :]).expand(images.shape[0], -1, -1)
        return padded, mask

    def _nms(self, logits: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, points, classes = logits.shape
        scores, index = logits.sigmoid().flatten(1).topk(min(self.pre_nms_top_k, points * classes), dim=1)
        labels = index % classes
        boxes = boxes.gather(1, (index // classes)[..., None].expand(-1, -1, 4))
        empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
        scores = scores.masked_fill(empty, 0.0)  # vfnet_postprocess drops boxes that clipping emptied
        # Each candidate scores only for its own class, so NMS per class is NMS among same-label candidates.
        class_ids = torch.arange(classes, device=labels.device)[None, :, None]
        per_class = torch.where(labels[:, None, :] == class_ids, scores[:, None, :], 0.0)
        kept = multiclass_nms(boxes, per_class, self.iou_threshold, self.score_threshold)
        image, candidate = kept[:, 0], kept[:, 2]
        kept_scores = scores[image, candidate]
        # The top_k best survivors of each image: scatter them into a [B, K + top_k] table whose
        # first columns are the survivors (-1 elsewhere), then one topk per row.
        table = scores.new_full((batch, kept.shape[0] + self.top_k), -1.0)
        slots = torch.arange(kept.shape[0], device=kept.device)
        table[image, slots] = kept_scores
        best, column = table.topk(self.top_k, dim=1)
        found = best >= 0
        pick = candidate.new_zeros(batch, kept.shape[0] + self.top_k)
        pick[image, slots] = candidate
        chosen = pick.gather(1, column)
        out_boxes = boxes.gather(1, chosen[..., None].expand(-1, -1, 4)) * found[..., None]
        out_labels = torch.where(found, labels.gather(1, chosen), -1)
        return out_boxes, best.clamp(min=0), out_labels
