"""Adaptive Training Sample Selection (Zhang et al., "Bridging the Gap Between Anchor-based
and Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020).

ATSS picks the positives of each ground-truth box from its statistics instead of a fixed
IoU threshold: on every pyramid level, the ``k`` anchors whose centres lie closest to the
box centre are candidates; the IoU threshold is the mean plus the standard deviation of the
candidates' IoUs with the box; a candidate is positive when its IoU reaches the threshold and
its centre lies inside the box. An anchor claimed by several boxes goes to the one it
overlaps most. No library in the dependency list has it (torchvision's detection models use
fixed-threshold matchers), so it is written here, following the paper's Algorithm 1 and the
authors' code (the mmdetection ``ATSSAssigner``: unbiased standard deviation, centre more than
0.01 pixel inside the box).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sightkit._api import export
from sightkit.ops.boxes import box_iou, check_boxes

# How far inside a box (pixels) an anchor centre must lie to count as inside, as in the authors' code.
_INSIDE_MARGIN = 0.01


@export("ops.atss_assign")
def atss_assign(anchors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor, topk: int = 9) -> Tensor:
    """Assign anchors to ground-truth boxes with ATSS (CVPR 2020, Algorithm 1).

    Args:
        anchors: ``[N, 4]`` xyxy anchor boxes of all pyramid levels, level after level.
        num_per_level: how many of the ``N`` anchors each level has, in order (sums to ``N``).
        gt_boxes: ``[M, 4]`` xyxy ground-truth boxes of one image (``M`` may be 0).
        topk: candidates per level and box, the ``k`` anchors with the closest centres
            (paper: 9); a level with fewer anchors gives all of them.

    Returns:
        ``[N]`` int64: the index of the box each anchor is assigned to, ``-1`` for negatives.
    """
    anchors = check_boxes(anchors, "anchors")
    gt_boxes = check_boxes(gt_boxes, "gt_boxes")
    if anchors.ndim != 2 or gt_boxes.ndim != 2:
        raise ValueError(
            f"anchors and gt_boxes must have shapes [N, 4] and [M, 4], got {tuple(anchors.shape)} "
            f"and {tuple(gt_boxes.shape)}"
        )
    sizes = [int(n) for n in num_per_level]
    if any(n < 0 for n in sizes) or sum(sizes) != anchors.shape[0]:
        raise ValueError(
            f"num_per_level must be non-negative counts that sum to the {anchors.shape[0]} anchors, got {sizes}"
        )
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive integer, got {topk!r}")
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return assigned

    ious = box_iou(anchors, gt_boxes.to(anchors.dtype))  # [N, M]
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    distances = torch.cdist(anchor_centres, gt_centres.to(anchors.dtype))  # [N, M]

    candidates = []
    start = 0
    for size in sizes:
        if size > 0:
            level = distances[start : start + size]
            candidates.append(level.topk(min(topk, size), dim=0, largest=False).indices + start)
        start += size
    candidates = torch.cat(candidates)  # [K, M] anchor indices, K = sum over levels of min(topk, size)
    candidate_ious = ious.gather(0, candidates)
    # A single candidate has no spread: its standard deviation is taken as 0 (torch would give NaN).
    spread = candidate_ious.std(0) if candidates.shape[0] > 1 else torch.zeros_like(candidate_ious[0])
    threshold = candidate_ious.mean(0) + spread  # [M]

    centres = anchor_centres[candidates]  # [K, M, 2]
    gt = gt_boxes.to(anchors.dtype)
    # The centre's distances to the box's four sides, (x - x1, y - y1, x2 - x, y2 - y).
    sides = torch.cat((centres - gt[:, :2], gt[:, 2:] - centres), dim=-1)
    inside = sides.amin(-1) > _INSIDE_MARGIN
    positive = (candidate_ious >= threshold) & inside  # [K, M]

    # Each anchor goes to the box it overlaps most among the boxes that chose it.
    claimed = torch.full_like(ious, -1.0)
    gt_index = torch.arange(num_gt, device=anchors.device).expand_as(candidates)
    claimed[candidates[positive], gt_index[positive]] = candidate_ious[positive]
    best_iou, best_gt = claimed.max(1)
    return torch.where(best_iou >= 0, best_gt, assigned)
