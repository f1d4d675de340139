"""Training losses of :class:`sightkit.models.FaceDetector`: the face score, the box and the
5 landmarks of every position, with FCOS's centre-sampling assignment.

A feature-map position is a positive for a face when it lies inside the face box and within
``radius`` strides of its centre (Tian et al., "FCOS", ICCV 2019, centre sampling); a
position that qualifies for several faces takes the smallest. The losses (RetinaFace's
multi-task loss with FCOS's box loss):

- ``loss_cls``: sigmoid focal loss over all positions, summed and divided by the number of
  positives (RetinaNet's normalisation);
- ``loss_box``: GIoU loss of the positives' boxes, mean over positives;
- ``loss_landmarks``: smooth-L1 of the positives' landmark errors divided by the face box's
  width and height (so that large and small faces weigh alike), mean over the labelled points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.losses.focal import sigmoid_focal_loss
from sightkit.losses.iou import generalized_box_iou_loss


@export("losses.assign_centre_positions")
def assign_centre_positions(points: Tensor, boxes: Tensor, stride: float, radius: float = 1.5) -> Tensor:
    """For each position ``[P, 2]`` (x, y) the index of the face box ``[T, 4]`` (xyxy) it is a
    positive for, or -1: inside the box and within ``radius * stride`` of its centre on both
    axes; the smallest box wins a position that qualifies for several."""
    if boxes.shape[0] == 0:
        return torch.full((points.shape[0],), -1, dtype=torch.long, device=points.device)
    x, y = points[:, 0:1], points[:, 1:2]
    inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    near = ((x - centre[:, 0]).abs() < radius * stride) & ((y - centre[:, 1]).abs() < radius * stride)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    cost = torch.where(inside & near, area[None, :], torch.full_like(inside, float("inf"), dtype=area.dtype))
    best, index = cost.min(dim=1)
    return torch.where(torch.isfinite(best), index, torch.full_like(index, -1))


@export("losses.FaceDetectionCriterion")
class FaceDetectionCriterion(nn.Module):
    """The face detector's losses (module docstring): ``forward(outputs, targets) -> {"loss_cls",
    "loss_box", "loss_landmarks"}``; ``weight_dict`` holds their weights for the trainer.

    ``outputs`` as :class:`~sightkit.models.FaceDetector` returns them; ``targets`` one dict per
    image with ``"boxes"`` ``[T, 4]`` xyxy and ``"landmarks"`` ``[T, 5, 2]`` in input pixels and
    optionally ``"visibility"`` ``[T, 5]`` (0: unlabelled point).
    """

    def __init__(
        self,
        stride: float,
        radius: float = 1.5,
        alpha: float = 0.25,
        gamma: float = 2.0,
        weight_cls: float = 1.0,
        weight_box: float = 2.0,
        weight_landmarks: float = 1.0,
    ) -> None:
        super().__init__()
        self.stride, self.radius, self.alpha, self.gamma = stride, radius, alpha, gamma
        self.weight_dict = {"loss_cls": weight_cls, "loss_box": weight_box, "loss_landmarks": weight_landmarks}

    def forward(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        logits = outputs["logits"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"targets must hold one dict per image ({logits.shape[0]}), got {len(targets)}")
        labels, pred_boxes, pred_marks, gt_boxes, gt_marks, visible = [], [], [], [], [], []
        for index, target in enumerate(targets):
            boxes = target["boxes"].to(logits.device, torch.float32)
            assigned = assign_centre_positions(outputs["points"], boxes, self.stride, self.radius)
            positive = torch.nonzero(assigned >= 0).squeeze(1)
            labels.append((assigned >= 0).to(logits.dtype))
            pred_boxes.append(outputs["boxes"][index, positive])
            pred_marks.append(outputs["landmarks"][index, positive])
            matched = assigned[positive]
            gt_boxes.append(boxes[matched])
            gt_marks.append(target["landmarks"].to(logits.device, torch.float32)[matched])
            vis = target.get("visibility")
            vis = torch.ones(boxes.shape[0], 5, device=logits.device) if vis is None else vis.to(logits.device)
            visible.append(vis[matched] > 0)
        count = max(sum(p.shape[0] for p in pred_boxes), 1)
        loss_cls = sigmoid_focal_loss(logits, torch.stack(labels), self.alpha, self.gamma, "sum") / count
        pred_box, gt_box = torch.cat(pred_boxes), torch.cat(gt_boxes)
        loss_box = generalized_box_iou_loss(pred_box, gt_box, reduction="sum") / count
        size = (gt_box[:, 2:] - gt_box[:, :2]).clamp(min=1.0)[:, None, :]
        error = F.smooth_l1_loss(torch.cat(pred_marks) / size, torch.cat(gt_marks) / size, reduction="none", beta=0.05)
        mask = torch.cat(visible)[..., None].expand_as(error)
        loss_landmarks = (error * mask).sum() / mask.sum().clamp(min=1)
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_landmarks": loss_landmarks}
