"""Box conversion, area and the pairwise IoU family (IoU, GIoU, DIoU, CIoU).

Boxes are ``xyxy`` (``x1, y1, x2, y2`` with ``x1 <= x2`` and ``y1 <= y2``) unless a function
says otherwise. Values equal ``torchvision.ops`` on valid boxes. Where torchvision divides
by zero, these functions stay finite, values and gradients alike:

- two zero-area boxes (points or lines) that do not overlap: IoU 0, GIoU 0;
- identical zero-area boxes: IoU 0 (nothing is covered), GIoU 0;
- inverted boxes (``x2 < x1`` or ``y2 < y1``) have a negative or zero area, overlap nothing
  and get IoU 0;
- coordinates must keep areas inside the float32 range (about ``|x| < 1e18``).

Half-precision inputs are computed in float32 and the result is float32, as torchvision
does; float64 stays float64.

References: GIoU, Rezatofighi et al., CVPR 2019; DIoU and CIoU, Zheng et al., AAAI 2020.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sightkit._api import export

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def check_boxes(boxes: Tensor, name: str) -> Tensor:
    """Validate a ``[..., 4]`` box tensor and upcast it to float32 (float64 stays float64)."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [..., 4], got {type(boxes).__name__}")
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        return boxes.float()
    return boxes if boxes.dtype == torch.float64 else boxes.float()


def _check_pairwise(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    boxes1 = check_boxes(boxes1, "boxes1")
    boxes2 = check_boxes(boxes2, "boxes2")
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if boxes.ndim != 2:
            raise ValueError(f"{name} must have shape [N, 4] for a pairwise op, got {tuple(boxes.shape)}")
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    return boxes1.to(dtype), boxes2.to(dtype)


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` where ``denominator > 0``, else 0, with finite gradients.

    The denominator is replaced by 1 before dividing (not after), so that the branch that
    is not taken cannot put a NaN into the backward pass.
    """
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1.0), 0.0)


@export("ops.box_convert")
def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes ``[..., 4]`` between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``.

    The only box-format converter in sightkit. Keeps the input dtype.
    """
    for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"{name} must be one of {BOX_FORMATS}, got {fmt!r}")
    if not isinstance(boxes, Tensor) or boxes.ndim == 0 or boxes.shape[-1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a tensor of shape [..., 4], got {shape}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        xyxy = (a, b, a + c, b + d)
    elif in_fmt == "cxcywh":
        xyxy = (a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d)
    else:
        xyxy = (a, b, c, d)
    x1, y1, x2, y2 = xyxy
    if out_fmt == "xyxy":
        out = (x1, y1, x2, y2)
    elif out_fmt == "xywh":
        out = (x1, y1, x2 - x1, y2 - y1)
    else:
        out = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    return torch.stack(out, dim=-1)


@export("ops.box_area")
def box_area(boxes: Tensor) -> Tensor:
    """Area of ``xyxy`` boxes ``[..., 4]`` -> ``[...]`` (negative for inverted boxes)."""
    boxes = check_boxes(boxes, "boxes")
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _pairwise_inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, area1[:, None] + area2[None, :] - inter


def _pairwise_enclosing(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Width and height of the smallest box enclosing each pair: ``[N, M, 2]``."""
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    return (rb - lt).clamp(min=0)


@export("ops.box_iou")
def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union of ``xyxy`` boxes.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[M, 4]`` xyxy.

    Returns:
        ``[N, M]`` IoU in [0, 1].
    """
    boxes1, boxes2 = _check_pairwise(boxes1, boxes2)
    inter, union = _pairwise_inter_union(boxes1, boxes2)
    return safe_divide(inter, union)


@export("ops.generalized_box_iou")
def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., 2019): ``IoU - |C \\ (A ∪ B)| / |C|``
    with ``C`` the smallest enclosing box.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[M, 4]`` xyxy.

    Returns:
        ``[N, M]`` GIoU in [-1, 1].
    """
    boxes1, boxes2 = _check_pairwise(boxes1, boxes2)
    inter, union = _pairwise_inter_union(boxes1, boxes2)
    iou = safe_divide(inter, union)
    wh = _pairwise_enclosing(boxes1, boxes2)
    area_c = wh[..., 0] * wh[..., 1]
    return iou - safe_divide(area_c - union, area_c)


def _pairwise_diou(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    inter, union = _pairwise_inter_union(boxes1, boxes2)
    iou = safe_divide(inter, union)
    wh = _pairwise_enclosing(boxes1, boxes2)
    diagonal_sq = wh[..., 0] ** 2 + wh[..., 1] ** 2 + eps
    centers1 = (boxes1[:, :2] + boxes1[:, 2:]) / 2
    centers2 = (boxes2[:, :2] + boxes2[:, 2:]) / 2
    center_dist_sq = ((centers1[:, None, :] - centers2[None, :, :]) ** 2).sum(-1)
    return iou - center_dist_sq / diagonal_sq, iou


@export("ops.distance_box_iou")
def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise distance IoU (Zheng et al., 2020): ``IoU - ρ²(centres) / c²`` with ``c`` the
    diagonal of the enclosing box.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[M, 4]`` xyxy.
        eps: added to ``c²`` so that coincident points stay finite.

    Returns:
        ``[N, M]`` DIoU in [-1, 1].
    """
    boxes1, boxes2 = _check_pairwise(boxes1, boxes2)
    return _pairwise_diou(boxes1, boxes2, eps)[0]


def aspect_angle(boxes: Tensor) -> Tensor:
    """``atan(w / h)`` of ``xyxy`` boxes, finite (with finite gradients) when ``h = 0``.

    ``atan2(w, h)`` equals ``atan(w / h)`` for ``h > 0`` and is defined at ``h = 0``; only
    the point ``w = h = 0`` needs a guard, where the angle is taken as 0.
    """
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    point = (w == 0) & (h == 0)
    return torch.atan2(w, torch.where(point, 1.0, h))


@export("ops.complete_box_iou")
def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise complete IoU (Zheng et al., 2020): ``DIoU - α v`` with the aspect-ratio term
    ``v = 4/π² (atan(w1/h1) - atan(w2/h2))²`` and ``α = v / (1 - IoU + v)``.

    As in torchvision, ``α`` is computed without gradient and is not gated by IoU.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[M, 4]`` xyxy.
        eps: added to ``c²`` and to the denominator of ``α``.

    Returns:
        ``[N, M]`` CIoU in [-1, 1].
    """
    boxes1, boxes2 = _check_pairwise(boxes1, boxes2)
    diou, iou = _pairwise_diou(boxes1, boxes2, eps)
    v = (4 / math.pi**2) * (aspect_angle(boxes1)[:, None] - aspect_angle(boxes2)[None, :]) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v
