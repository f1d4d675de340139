"""The VarifocalNet training criterion (Zhang et al., "VarifocalNet: An IoU-aware Dense Object
Detector", CVPR 2021, Sec. 3-4): ATSS targets, varifocal loss on the IoU-aware
classification scores, IoU-weighted GIoU losses on the initial and refined boxes.

For each image, :func:`sightkit.ops.atss_assign` picks the positive locations of every
object from the locations' anchors. With ``q`` the IoU of a positive's box with its object
(detached, floored at 1e-6):

- ``loss_cls``: the varifocal loss of every (location, class) score against the IoU target
  (``q`` of the *refined* box at the object's class, 0 elsewhere), summed and divided by the
  number of positives; the ablation ``cls_loss="focal"`` uses the focal loss (α 0.25, γ 2)
  against one-hot targets instead.
- ``loss_bbox`` / ``loss_bbox_refine``: the GIoU loss of each positive's initial / refined
  box, weighted by that box's own ``q``, summed and divided by the sum of the weights.

Every normaliser is averaged over processes under DDP (an all-reduce), so that each rank's
loss is its share of the global batch's, as the authors' code does; each is floored at 1.
The weights (1, 1.5, 2.0 in the paper) are in :attr:`VFNetCriterion.weight_dict` and applied
by the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sightkit._api import export
from sightkit.losses.focal import sigmoid_focal_loss
from sightkit.losses.iou import generalized_box_iou_loss
from sightkit.losses.varifocal import varifocal_loss
from sightkit.ops.atss import atss_assign
from sightkit.ops.boxes import elementwise_box_iou

CLS_LOSSES = ("varifocal", "focal")
_MIN_IOU = 1e-6  # the authors' floor on IoU targets and box-loss weights


def _at_least_float32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _mean_over_processes(value: Tensor) -> Tensor:
    """The mean of a detached scalar over the processes of a DDP run, floored at 1 (itself on one process)."""
    value = value.detach().clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value.clamp(min=1)


@export("losses.VFNetCriterion")
class VFNetCriterion(nn.Module):
    """Losses of a :class:`sightkit.models.VFNet` output against ATSS targets (module docstring).

    Args:
        num_classes: ``C``.
        cls_loss: ``"varifocal"`` (the paper) or ``"focal"`` (the ablation).
        alpha, gamma: of the classification loss; ``None`` takes each loss's paper value
            (varifocal: α 0.75, γ 2; focal: α 0.25, γ 2).
        topk: ATSS candidates per level and object (paper: 9).
        weight_cls, weight_bbox, weight_bbox_refine: the loss weights (paper: 1, 1.5, 2).

    ``forward(outputs, targets)``: ``outputs`` the model's dict (``pred_logits`` ``[B, N, C]``,
    ``pred_boxes_init`` and optionally ``pred_boxes_refine`` ``[B, N, 4]`` xyxy, ``anchors``
    ``[N, 4]``, ``level_sizes``); ``targets`` one dict per image with ``"labels"`` ``[T]``
    int64 in ``0 .. C - 1`` and ``"boxes"`` ``[T, 4]`` absolute xyxy in input pixels. Returns
    ``{"loss_cls", "loss_bbox"}`` and, for a model with refinement, ``"loss_bbox_refine"``,
    each an unweighted scalar.
    """

    def __init__(
        self,
        num_classes: int,
        cls_loss: str = "varifocal",
        alpha: float | None = None,
        gamma: float = 2.0,
        topk: int = 9,
        weight_cls: float = 1.0,
        weight_bbox: float = 1.5,
        weight_bbox_refine: float = 2.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
        self.num_classes, self.cls_loss, self.topk = num_classes, cls_loss, topk
        self.alpha = alpha if alpha is not None else (0.75 if cls_loss == "varifocal" else 0.25)
        self.gamma = gamma
        self.weight_dict = {"loss_cls": weight_cls, "loss_bbox": weight_bbox, "loss_bbox_refine": weight_bbox_refine}

    def forward(self, outputs: dict[str, Any], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        logits = _at_least_float32(outputs["pred_logits"])
        batch, _, num_classes = logits.shape
        if num_classes != self.num_classes:
            raise ValueError(f"pred_logits must have {self.num_classes} classes in its last axis, got {num_classes}")
        if len(targets) != batch:
            raise ValueError(f"targets must hold one dict per image ({batch}), got {len(targets)}")
        anchors = outputs["anchors"]
        assigned = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            if labels.numel() and not bool(((labels >= 0) & (labels < self.num_classes)).all()):
                raise ValueError(
                    f"targets[{b}]['labels'] must lie in [0, {self.num_classes - 1}], got {labels.tolist()}"
                )
            assigned.append(atss_assign(anchors, outputs["level_sizes"], target["boxes"].to(anchors.device), self.topk))
        assigned = torch.stack(assigned)  # [B, N], -1 on negatives
        image, point = torch.nonzero(assigned >= 0, as_tuple=True)
        gt = assigned[image, point]
        gt_boxes = torch.cat([t["boxes"].float() for t in targets])
        gt_labels = torch.cat([t["labels"] for t in targets])
        # Row of each image's first box in the concatenation, to index the assigned boxes.
        offsets = torch.tensor([0, *[len(t["labels"]) for t in targets]], device=logits.device).cumsum(0)[:-1]
        target_boxes = gt_boxes[offsets[image] + gt].to(logits.device, logits.dtype)
        target_labels = gt_labels[offsets[image] + gt].to(logits.device)

        num_pos = _mean_over_processes(torch.tensor(float(image.numel()), device=logits.device))
        losses = {}
        for key, name in (("pred_boxes_init", "loss_bbox"), ("pred_boxes_refine", "loss_bbox_refine")):
            if key not in outputs:
                continue
            boxes = _at_least_float32(outputs[key][image, point])
            iou = elementwise_box_iou(boxes.detach(), target_boxes).clamp(min=_MIN_IOU)
            losses[name] = (generalized_box_iou_loss(boxes, target_boxes) * iou).sum() / _mean_over_processes(iou.sum())
            iou_target = iou  # the refined box's when there is one: it comes last

        cls_targets = torch.zeros_like(logits)
        if self.cls_loss == "varifocal":
            cls_targets[image, point, target_labels] = iou_target
            loss = varifocal_loss(logits, cls_targets, alpha=self.alpha, gamma=self.gamma, reduction="sum")
        else:
            cls_targets[image, point, target_labels] = 1.0
            loss = sigmoid_focal_loss(logits, cls_targets, alpha=self.alpha, gamma=self.gamma, reduction="sum")
        losses["loss_cls"] = loss / num_pos
        return losses

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, cls_loss={self.cls_loss!r}, alpha={self.alpha}, gamma={self.gamma}"
