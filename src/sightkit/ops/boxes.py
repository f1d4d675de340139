"""Box conversion, area and the IoU family (IoU, GIoU, DIoU, CIoU), pairwise and element-wise.

Boxes are ``xyxy`` (``x1, y1, x2, y2`` with ``x1 <= x2`` and ``y1 <= y2``) unless a function
says otherwise. The pairwise functions compare every box of ``[N, 4]`` with every box of
``[M, 4]`` (``[N, M]`` out, as ``torchvision.ops``); the ``elementwise_`` functions compare
matched pairs ``[..., 4]`` with ``[..., 4]`` (``[...]`` out, shapes broadcast), which is what
a loss on matched predictions and targets needs. Both share one implementation, so an
element-wise value equals the diagonal of the pairwise matrix.

Values equal ``torchvision.ops`` on valid boxes. Where torchvision divides by zero, these
functions stay finite, values and gradients alike:

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


def check_box_pairs(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Validate matched ``[..., 4]`` box tensors whose batch shapes broadcast, and bring both
    to one float dtype (float32, or float64 if either is float64)."""
    boxes1 = check_boxes(boxes1, "boxes1")
    boxes2 = check_boxes(boxes2, "boxes2")
    try:
        torch.broadcast_shapes(boxes1.shape, boxes2.shape)
    except RuntimeError:
        raise ValueError(
            "boxes1 and boxes2 must be matched pairs of the same shape [..., 4] (or shapes that broadcast), "
            f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        ) from None
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    return boxes1.to(dtype), boxes2.to(dtype)


def _check_pairwise(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Validate ``[N, 4]`` and ``[M, 4]`` and shape them ``[N, 1, 4]`` and ``[1, M, 4]``, so
    that the element-wise maths broadcasts to the ``[N, M]`` matrix."""
    boxes1 = check_boxes(boxes1, "boxes1")
    boxes2 = check_boxes(boxes2, "boxes2")
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if boxes.ndim != 2:
            raise ValueError(f"{name} must have shape [N, 4] for a pairwise op, got {tuple(boxes.shape)}")
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    return boxes1.to(dtype)[:, None, :], boxes2.to(dtype)[None, :, :]


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
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a torch.Tensor of shape [..., 4], got {type(boxes).__name__}")
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got {tuple(boxes.shape)}")
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
    return _area(boxes)


def _sides(boxes: Tensor) -> tuple[Tensor, Tensor]:
    return boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]


def _area(boxes: Tensor) -> Tensor:
    w, h = _sides(boxes)
    return w * h


# The functions below take validated boxes of broadcastable shapes [..., 4] and return [...].


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, _area(boxes1) + _area(boxes2) - inter


def _enclosing_wh(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Width and height of the smallest box enclosing each pair: ``[..., 2]``."""
    lt = torch.min(boxes1[..., :2], boxes2[..., :2])
    rb = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    return (rb - lt).clamp(min=0)


def _iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    inter, union = _inter_union(boxes1, boxes2)
    return safe_divide(inter, union)


def _giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    inter, union = _inter_union(boxes1, boxes2)
    wh = _enclosing_wh(boxes1, boxes2)
    area_c = wh[..., 0] * wh[..., 1]
    return safe_divide(inter, union) - safe_divide(area_c - union, area_c)


def _diou_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    iou = _iou(boxes1, boxes2)
    wh = _enclosing_wh(boxes1, boxes2)
    diagonal_sq = wh[..., 0] ** 2 + wh[..., 1] ** 2 + eps
    centres1 = (boxes1[..., :2] + boxes1[..., 2:]) / 2
    centres2 = (boxes2[..., :2] + boxes2[..., 2:]) / 2
    centre_dist_sq = ((centres1 - centres2) ** 2).sum(-1)
    return iou - centre_dist_sq / diagonal_sq, iou


def aspect_angle(w: Tensor, h: Tensor) -> Tensor:
    """``atan(w / h)``, the angle of a box's diagonal, finite (with finite gradients) at ``h = 0``.

    Computed as ``atan2(±w, |h|)`` with the sign of ``h``, which equals ``atan(w / h)`` (also
    for inverted boxes, ``h < 0``, as torchvision computes it) and needs no division; at
    ``h = 0`` it is ``±π/2`` like ``atan(±inf)``. Only the point ``w = h = 0`` needs a guard,
    where the angle is taken as 0.
    """
    h = torch.where((w == 0) & (h == 0), 1.0, h)
    return torch.atan2(torch.where(h < 0, -w, w), h.abs())


def _ciou(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    diou, iou = _diou_iou(boxes1, boxes2, eps)
    v = (4 / math.pi**2) * (aspect_angle(*_sides(boxes1)) - aspect_angle(*_sides(boxes2))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


@export("ops.box_iou")
def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union of ``xyxy`` boxes.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[M, 4]`` xyxy.

    Returns:
        ``[N, M]`` IoU in [0, 1].
    """
    return _iou(*_check_pairwise(boxes1, boxes2))


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
    return _giou(*_check_pairwise(boxes1, boxes2))


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
    return _diou_iou(*_check_pairwise(boxes1, boxes2), eps)[0]


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
        ``[N, M]`` CIoU in (-2, 1] (the aspect term ``α v < 1`` comes on top of DIoU's ``-1``).
    """
    return _ciou(*_check_pairwise(boxes1, boxes2), eps)


@export("ops.elementwise_box_iou")
def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of matched pairs of ``xyxy`` boxes.

    Args:
        boxes1: ``[..., 4]`` xyxy.
        boxes2: ``[..., 4]`` xyxy, the same shape as ``boxes1`` (or one that broadcasts).

    Returns:
        ``[...]`` IoU in [0, 1]; ``box_iou(a, b).diagonal()`` for ``[N, 4]`` inputs.
    """
    return _iou(*check_box_pairs(boxes1, boxes2))


@export("ops.elementwise_generalized_box_iou")
def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU (Rezatofighi et al., 2019) of matched pairs; see :func:`generalized_box_iou`.

    Args:
        boxes1: ``[..., 4]`` xyxy.
        boxes2: ``[..., 4]`` xyxy, the same shape as ``boxes1`` (or one that broadcasts).

    Returns:
        ``[...]`` GIoU in [-1, 1].
    """
    return _giou(*check_box_pairs(boxes1, boxes2))


@export("ops.elementwise_distance_box_iou")
def elementwise_distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Distance IoU (Zheng et al., 2020) of matched pairs; see :func:`distance_box_iou`.

    Args:
        boxes1: ``[..., 4]`` xyxy.
        boxes2: ``[..., 4]`` xyxy, the same shape as ``boxes1`` (or one that broadcasts).
        eps: added to the squared diagonal of the enclosing box.

    Returns:
        ``[...]`` DIoU in [-1, 1].
    """
    return _diou_iou(*check_box_pairs(boxes1, boxes2), eps)[0]


@export("ops.elementwise_complete_box_iou")
def elementwise_complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU (Zheng et al., 2020) of matched pairs; see :func:`complete_box_iou`.

    Args:
        boxes1: ``[..., 4]`` xyxy.
        boxes2: ``[..., 4]`` xyxy, the same shape as ``boxes1`` (or one that broadcasts).
        eps: added to the squared diagonal of the enclosing box and to the denominator of ``α``.

    Returns:
        ``[...]`` CIoU in (-2, 1].
    """
    return _ciou(*check_box_pairs(boxes1, boxes2), eps)
