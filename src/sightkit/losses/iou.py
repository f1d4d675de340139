"""The IoU-family losses on matched pairs of boxes: IoU (linear, square, log), GIoU, DIoU, CIoU.

Every loss takes ``boxes1`` and ``boxes2`` of shape ``[..., 4]`` in ``xyxy`` format (matched
pairs; the shapes may broadcast) and returns ``[...]`` before reduction. The values equal
``torchvision.ops.generalized_box_iou_loss``, ``distance_box_iou_loss`` and
``complete_box_iou_loss``; the IoU loss uses the same ``IoU = inter / (union + eps)``.

Why these are written by hand. Autograd through torchvision's formulas keeps a dozen or
more ``[N]`` intermediates alive until the backward pass, and every elementary operation
(forward, backward, boolean-mask indexing) is a round trip through memory. Here each loss is
one ``torch.autograd.Function``: the forward saves only the two input tensors (and, for
CIoU, one ``[N]`` tensor, the derivative of ``α v`` by the angle, since its ``atan2`` are
the dearest part to recompute), and the backward recomputes the rest of the geometry and
applies the chain rule derived below.

How the passes run. From ``_FUSED_MIN_PAIRS`` float32 pairs up, on the CPU or a CUDA device,
each pass is one kernel that ``torch.compile`` (inductor) generates from the same code: a
loop over the pairs with every temporary in registers, OpenMP-parallel SIMD C++ over torch's
intra-op threads on the CPU, Triton on CUDA. It is compiled on first use (seconds; inductor
caches it on disk), and ``SIGHTKIT_COMPILE=0`` turns it off. Otherwise, and for the process
after a failed compilation (no C++ compiler, no Triton), the eager kernels run, on the CPU
over blocks of ``_CPU_BLOCK`` pairs so that a block's temporaries stay in the cache (one
core), elsewhere in one go. ``benchmarks/iou_loss.py`` measures both against torchvision.

Notation for one pair: box ``a = (ax1, ay1, ax2, ay2)``, box ``b``; along x the intersection
width is ``iw = min(ax2, bx2) - max(ax1, bx1)`` and the enclosing width
``cw = max(ax2, bx2) - min(ax1, bx1)`` (likewise ``ih``, ``ch``); ``inter = iw⁺ ih⁺``,
``U = area_a + area_b - inter``, ``IoU = inter / (U + ε)``. With ``Uε = U + ε``::

    ∂IoU/∂inter = (1 + IoU) / Uε         ∂IoU/∂area_a = ∂IoU/∂area_b = -IoU / Uε
    GIoU term  P = (C - U) / (C + ε):    ∂P/∂C = Uε / (C + ε)²,   ∂P/∂U = -1 / (C + ε)
    DIoU term  R = ρ² / c²:              ∂R/∂ρ² = 1 / c²,         ∂R/∂c² = -R / c²
    CIoU term  α v, v = 4/π² (θa - θb)², θ = atan(w / h), α constant:
                                         ∂(αv)/∂θa = 8α/π² (θa - θb),  ∂θ/∂w = h / (w² + h²),
                                         ∂θ/∂h = -w / (w² + h²)

Non-differentiable points, and the subgradient chosen (all match what autograd gives for
torchvision's formulas, so gradients agree with torchvision everywhere):

- ``max``/``min`` of two equal coordinates: half of the gradient goes to each (the
  ``torch.maximum`` convention). Identical boxes, the minimum of every loss, thus get a zero
  gradient.
- the intersection at ``iw <= 0`` or ``ih <= 0`` (touching or apart): zero gradient through
  the intersection, as torchvision's masked intersection;
- ``log`` mode clamps IoU below at ``eps``: zero gradient where ``IoU < eps``;
- ``θ = atan(w / h)`` is computed as ``atan2`` without dividing, so it is ``±π/2`` with
  finite derivatives at ``h = 0``; the point box ``w = h = 0`` (where torchvision gives NaN)
  takes ``θ = 0`` and zero derivatives.

The backward is first-order only (``once_differentiable``); a double backward raises.

References: UnitBox (log IoU loss), Yu et al., ACM MM 2016; GIoU, Rezatofighi et al., CVPR
2019; DIoU and CIoU, Zheng et al., AAAI 2020.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from sightkit._api import export
from sightkit.losses.reduction import check_reduction, reduce_loss
from sightkit.ops.boxes import check_box_pairs

IOU_LOSS_MODES = ("linear", "square", "log")

# Pairs per block of the eager kernels on the CPU: a block's temporaries (a few dozen columns
# of 128 KiB) stay in the cache, and the per-operation overhead (a few µs) is paid once per
# 32k pairs; measured on 1M pairs, 8k-pair blocks were 1.5x slower and 64k-128k no faster.
# 32768 is also torch's intra-op grain size, so each operation runs on one thread: the eager
# kernels use one core, because blocks of 32k pairs per thread (an OpenMP fork and join per
# operation, some 60 per block) were 4x slower at 2 threads on a loaded 2-core machine.
# Using every core is the generated kernels' job (below). Other devices run one block: their
# kernels stream from fast memory, and a launch per block would cost more than it saves.
_CPU_BLOCK = 32768
# From this many pairs on (four blocks, ~10 ms a step on one core) the kernels are compiled
# by torch.compile into a few fused loops that split the pairs over every intra-op thread;
# below it, compiling (seconds, once per process) would cost more than it saves.
_FUSED_MIN_PAIRS = 1 << 17
# Inductor's CPU code generator gives up on SIMD for a loop where more than 12% of the
# operations are strided loads or stores (its tiling heuristics), and reading pairs [N, 4] is
# 8 strided loads, storing their gradients 4 strided stores: every kernel came out scalar (and
# CIoU's atan2 became std::atan2). Without the heuristics the loads are vectorised gathers:
# on 1M pairs, fwd+bwd 2-2.5x faster than copying blocks of pairs into contiguous coordinate
# rows first (the earlier way round), and it scales to the second core, which that copy did not.
_FUSED_OPTIONS = {"cpp.enable_tiling_heuristics": False}
_FUSED_KERNELS: dict[Callable[..., object], Callable[..., object]] = {}  # eager kernel -> compiled
_FUSED_FAILURES: list[str] = []  # why compilation failed, if it did: the process stays eager
_Result = TypeVar("_Result")
_ASPECT_SCALE = 4 / math.pi**2


def _check_eps(eps: float) -> None:
    if not isinstance(eps, int | float) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")


def _blocks(n: int, device: torch.device) -> list[slice]:
    """The eager kernels' slices of ``n`` pairs: ``_CPU_BLOCK`` at a time on the CPU, all at once elsewhere."""
    step = _CPU_BLOCK if device.type == "cpu" else max(n, 1)
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


class _Axis(NamedTuple):
    """One axis (x or y) of a block of pairs; each field ``[n]``."""

    a_side: Tensor  # a_hi - a_lo, the width (or height) of box a
    b_side: Tensor
    lo_gap: Tensor  # a_lo - b_lo
    hi_gap: Tensor  # a_hi - b_hi
    overlap: Tensor  # min(a_hi, b_hi) - max(a_lo, b_lo), the side of the intersection; negative when apart
    enclosing: Tensor | None  # max(a_hi, b_hi) - min(a_lo, b_lo), the side of the enclosing box (GIoU, DIoU, CIoU)


def _axis(a_lo: Tensor, a_hi: Tensor, b_lo: Tensor, b_hi: Tensor, enclosing: bool) -> _Axis:
    # The coordinates are strided columns of [n, 4] blocks, two to three times slower to read
    # than a contiguous column, so they are read only by the four differences; min and max
    # follow from min(u, v) = (u + v - |u - v|) / 2 and max(u, v) = (u + v + |u - v|) / 2.
    # The sides are then rounded at the scale of the box sides rather than exact like
    # torch.maximum; the losses still agree with torchvision's to about 1e-7.
    a_side = a_hi - a_lo
    b_side = b_hi - b_lo
    lo_gap = a_lo - b_lo
    hi_gap = a_hi - b_hi
    total = a_side + b_side
    spread = lo_gap.abs().add_(hi_gap.abs())
    overlap = (total - spread).mul_(0.5)
    enclosing_side = total.add_(spread).mul_(0.5) if enclosing else None
    return _Axis(a_side, b_side, lo_gap, hi_gap, overlap, enclosing_side)


class _Pairs(NamedTuple):
    """The geometry of a block of pairs; see the notation in the module docstring."""

    x: _Axis
    y: _Axis
    inter: Tensor
    union_eps: Tensor  # union + eps
    iou: Tensor  # inter / (union + eps)


def _pairs(a: Tensor, b: Tensor, kind: str, eps: float) -> _Pairs:
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    enclosing = kind not in IOU_LOSS_MODES
    x = _axis(ax1, ax2, bx1, bx2, enclosing)
    y = _axis(ay1, ay2, by1, by2, enclosing)
    inter = x.overlap.clamp(min=0).mul_(y.overlap.clamp(min=0))
    union_eps = torch.addcmul(x.a_side * y.a_side, x.b_side, y.b_side).sub_(inter).add_(eps)
    return _Pairs(x, y, inter, union_eps, inter / union_eps)


def _centre_offset(axis: _Axis) -> Tensor:
    """Centre of box a minus centre of box b along the axis."""
    return (axis.lo_gap + axis.hi_gap).mul_(0.5)


def _aspect_angle(w: Tensor, h: Tensor) -> Tensor:
    """``atan(w / h)``: the same angle as :func:`sightkit.ops.boxes.aspect_angle`, without its
    guard of the point box (which only protects autograd; here ``atan2(0, 0) = 0`` and the
    backward handles the point itself)."""
    sign_h = torch.copysign(torch.ones((), dtype=h.dtype, device=h.device), h)
    return torch.atan2(w * sign_h, h.abs())


def _aspect(pairs: _Pairs, eps: float) -> tuple[Tensor, Tensor]:
    """The CIoU weight ``α`` and ``θa - θb``; the aspect term is ``v = 4/π² (θa - θb)²``."""
    dtheta = _aspect_angle(pairs.x.a_side, pairs.y.a_side) - _aspect_angle(pairs.x.b_side, pairs.y.b_side)
    v = dtheta.square().mul_(_ASPECT_SCALE)
    return v / (v + (1 + eps) - pairs.iou), dtheta


def _loss_kernel(a: Tensor, b: Tensor, kind: str, eps: float) -> tuple[Tensor, Tensor | None]:
    """The loss ``[n]`` of pairs ``[n, 4]``, and for CIoU ``∂(α v)/∂θa = 8α/π² (θa - θb)``
    ``[n]``, which the backward reuses (None for the other kinds)."""
    pairs = _pairs(a, b, kind, eps)
    iou = pairs.iou
    aspect_slope = None
    if kind == "linear":
        return 1 - iou, None
    if kind == "square":
        return 1 - iou.square(), None
    if kind == "log":
        return iou.clamp(min=eps).log_().neg_(), None
    if kind == "giou":
        area_c = pairs.x.enclosing * pairs.y.enclosing
        penalty = (area_c + eps - pairs.union_eps).div_(area_c.add_(eps))  # (C - U) / (C + eps)
    else:
        diagonal_sq = torch.addcmul(pairs.x.enclosing.square(), pairs.y.enclosing, pairs.y.enclosing).add_(eps)
        dx, dy = _centre_offset(pairs.x), _centre_offset(pairs.y)
        penalty = torch.addcmul(dx.square_(), dy, dy).div_(diagonal_sq)
        if kind == "ciou":
            alpha, dtheta = _aspect(pairs, eps)
            aspect_slope = alpha.mul_(dtheta).mul_(2 * _ASPECT_SCALE)
            penalty.addcmul_(aspect_slope, dtheta, value=0.5)  # α v = slope (θa - θb) / 2
    return penalty.add_(1).sub_(iou), aspect_slope


def _axis_grads(
    axis: _Axis,
    d_overlap: Tensor,
    d_enclosing: Tensor | None,
    d_a_side: Tensor,
    d_b_side: Tensor | None,
    d_shift: Tensor | None,
) -> tuple[tuple[Tensor, Tensor] | None, tuple[Tensor, Tensor] | None]:
    """The gradients with respect to the low and high coordinate of each box along one axis,
    ``((a_lo, a_hi), (b_lo, b_hi))``, given the loss gradients with respect to the overlap
    side, the enclosing side, each box's own side (``d_b_side`` None: box b's are not
    wanted), and ``d_shift``, the gradient that a shift of box a's centre gives each of its
    coordinates (box b's get its negative).

    With ``σ = sign(a_lo - b_lo)``, ``∂max(a_lo, b_lo)/∂a_lo = (1 + σ) / 2`` and
    ``∂min(a_lo, b_lo)/∂a_lo = (1 - σ) / 2`` (likewise at the high end), so that with
    ``M = (d_overlap + d_enclosing) / 2`` and ``P = (d_overlap - d_enclosing) / 2``::

        ∂/∂a_lo = -(d_a_side + M) - P σ_lo + d_shift     ∂/∂a_hi = (d_a_side + M) - P σ_hi + d_shift
        ∂/∂b_lo = -(d_b_side + M) + P σ_lo - d_shift     ∂/∂b_hi = (d_b_side + M) + P σ_hi - d_shift
    """
    if d_enclosing is None:
        mean = half = d_overlap.mul_(0.5)
    else:
        mean = (d_overlap + d_enclosing).mul_(0.5)
        half = d_overlap.sub_(d_enclosing).mul_(0.5)
    at_lo = half * axis.lo_gap.sign()
    at_hi = half * axis.hi_gap.sign()
    grads_a = grads_b = None
    if d_a_side is not None:
        side = d_a_side + mean
        lo = side.neg() if d_shift is None else d_shift - side
        hi = side if d_shift is None else side.add_(d_shift)
        grads_a = (lo.sub_(at_lo), hi.sub_(at_hi))
    if d_b_side is not None:
        side = d_b_side.add_(mean)
        lo = at_lo.sub_(side if d_shift is None else side + d_shift)
        hi = at_hi.add_(side if d_shift is None else side.sub_(d_shift))
        grads_b = (lo, hi)
    return grads_a, grads_b


def _grad_kernel(
    a: Tensor,
    b: Tensor,
    grad: Tensor,
    kind: str,
    eps: float,
    aspect_slope: Tensor | None,
    need_a: bool,
    need_b: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of ``sum(grad * loss)`` with respect to the pairs ``a`` and ``b``
    (``[n, 4]`` each; None where ``need_a`` or ``need_b`` is false). ``aspect_slope`` is
    what :func:`_loss_kernel` returned for CIoU."""
    pairs = _pairs(a, b, kind, eps)
    x, y, iou = pairs.x, pairs.y, pairs.iou
    if kind == "square":
        d_iou = (-2 * grad) * iou
    elif kind == "log":
        d_iou = torch.where(iou >= eps, -grad / iou.clamp(min=eps), 0.0)
    else:
        d_iou = -grad
    scaled = d_iou / pairs.union_eps
    d_area = (scaled * iou).neg_()  # ∂loss/∂area, the same for both boxes
    d_inter = scaled.sub_(d_area)  # d_iou (1 + IoU) / (U + eps)

    d_enclosing_x = d_enclosing_y = d_shift_x = d_shift_y = None
    if kind == "giou":
        area_c_eps = torch.mul(x.enclosing, y.enclosing).add_(eps)
        over_c = grad / area_c_eps
        d_inter.add_(over_c)  # U enters (C - U) / (C + eps) too
        d_area.sub_(over_c)
        d_area_c = over_c.mul_(pairs.union_eps).div_(area_c_eps)
        d_enclosing_x, d_enclosing_y = d_area_c * y.enclosing, d_area_c * x.enclosing
    elif kind in ("diou", "ciou"):
        diagonal_sq = torch.addcmul(x.enclosing.square(), y.enclosing, y.enclosing).add_(eps)
        dx, dy = _centre_offset(x), _centre_offset(y)
        over_diagonal = grad / diagonal_sq
        d_shift_x, d_shift_y = over_diagonal * dx, over_diagonal * dy
        # ∂(ρ²/c²)/∂c² = -ρ²/c⁴, and ∂c²/∂cw = 2 cw
        d_diagonal = torch.addcmul(dx.square_(), dy, dy).mul_(over_diagonal).div_(diagonal_sq).mul_(-2)
        d_enclosing_x, d_enclosing_y = d_diagonal * x.enclosing, d_diagonal.mul_(y.enclosing)

    # CIoU's gradients of box a need those of box b's sides (the aspect term joins them)
    d_aw, d_ah = d_area * y.a_side, d_area * x.a_side
    d_bw, d_bh = (d_area * y.b_side, d_area.mul_(x.b_side)) if need_b or kind == "ciou" else (None, None)
    if kind == "ciou":
        d_theta = aspect_slope * grad  # ∂/∂θa; ∂/∂θb is its negative
        # ∂θ/∂w = h / (w² + h²) and ∂θ/∂h = -w / (w² + h²); the clamp makes a point box's zero
        tiny = torch.finfo(a.dtype).tiny
        over_a = d_theta / torch.addcmul(x.a_side.square(), y.a_side, y.a_side).clamp_(min=tiny)
        over_b = d_theta.div_(torch.addcmul(x.b_side.square(), y.b_side, y.b_side).clamp_(min=tiny))
        d_aw.addcmul_(over_a, y.a_side)
        d_ah.addcmul_(over_a, x.a_side, value=-1)
        d_bw.addcmul_(over_b, y.b_side, value=-1)
        d_bh.addcmul_(over_b, x.b_side)

    # ∂inter/∂overlap_x = overlap_y where the boxes overlap (inter > 0), else 0
    d_inter.mul_(pairs.inter.sign())
    d_overlap_x, d_overlap_y = d_inter * y.overlap, d_inter.mul_(x.overlap)
    x_a, x_b = _axis_grads(x, d_overlap_x, d_enclosing_x, d_aw if need_a else None, d_bw if need_b else None, d_shift_x)
    y_a, y_b = _axis_grads(y, d_overlap_y, d_enclosing_y, d_ah if need_a else None, d_bh if need_b else None, d_shift_y)
    grad_a = torch.stack([x_a[0], y_a[0], x_a[1], y_a[1]], dim=-1) if need_a else None
    grad_b = torch.stack([x_b[0], y_b[0], x_b[1], y_b[1]], dim=-1) if need_b else None
    return grad_a, grad_b


def _fused_wanted(boxes: Tensor) -> bool:
    """Whether the pairs ``[N, 4]`` go through the generated kernels: float32 (float64 is for
    checking; half inputs arrive as float32), on the CPU or a CUDA device, from
    ``_FUSED_MIN_PAIRS`` pairs up, unless ``SIGHTKIT_COMPILE=0`` or compilation failed before,
    and not while an outer ``torch.compile`` traces the caller (it fuses the eager kernels itself)."""
    return (
        boxes.shape[0] >= _FUSED_MIN_PAIRS
        and boxes.dtype == torch.float32
        and boxes.device.type in ("cpu", "cuda")
        and os.environ.get("SIGHTKIT_COMPILE", "1") != "0"
        and not _FUSED_FAILURES
        and not torch.compiler.is_compiling()
    )


def _fused(kernel: Callable[..., _Result], *args: object) -> _Result | None:
    """``kernel(*args)`` as kernels that ``torch.compile`` generates for the whole input (one
    loop per pass, OpenMP-parallel C++ on the CPU, Triton on CUDA; compiled once per kind and
    dtype, seconds, and cached on disk by inductor). None if compilation fails, with a
    warning; the process then keeps to the blocked kernels."""
    try:
        if kernel not in _FUSED_KERNELS:
            _FUSED_KERNELS[kernel] = torch.compile(kernel, dynamic=True, options=_FUSED_OPTIONS)
        return _FUSED_KERNELS[kernel](*args)
    except Exception as error:  # no C++ compiler, no Triton, an inductor bug: all leave the eager kernels
        _FUSED_FAILURES.append(f"{type(error).__name__}: {error}")
        warnings.warn(
            f"IoU losses: torch.compile failed ({_FUSED_FAILURES[-1]:.300}); using the blocked eager kernels",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def _losses(a: Tensor, b: Tensor, kind: str, eps: float) -> tuple[Tensor, Tensor | None]:
    """:func:`_loss_kernel` over all pairs, fused or block by block."""
    if _fused_wanted(a) and (result := _fused(_loss_kernel, a, b, kind, eps)) is not None:
        return result
    blocks = _blocks(a.shape[0], a.device)
    if len(blocks) == 1:
        return _loss_kernel(a, b, kind, eps)
    loss = a.new_empty(a.shape[0])
    aspect_slope = a.new_empty(a.shape[0]) if kind == "ciou" else None
    for block in blocks:
        loss[block], slope = _loss_kernel(a[block], b[block], kind, eps)
        if slope is not None:
            aspect_slope[block] = slope
    return loss, aspect_slope


def _grads(
    a: Tensor, b: Tensor, grad: Tensor, kind: str, eps: float, aspect_slope: Tensor | None, need_a: bool, need_b: bool
) -> tuple[Tensor | None, Tensor | None]:
    """:func:`_grad_kernel` over all pairs, fused or block by block."""
    args = (kind, eps)
    if _fused_wanted(a):
        # an expanded gradient (of a sum) has stride 0, which would compile a second kernel
        result = _fused(_grad_kernel, a, b, grad.contiguous(), *args, aspect_slope, need_a, need_b)
        if result is not None:
            return result
    blocks = _blocks(a.shape[0], a.device)
    if len(blocks) == 1:
        return _grad_kernel(a, b, grad, *args, aspect_slope, need_a, need_b)
    grad_a = torch.empty_like(a) if need_a else None
    grad_b = torch.empty_like(b) if need_b else None
    for block in blocks:
        slope = None if aspect_slope is None else aspect_slope[block]
        block_a, block_b = _grad_kernel(a[block], b[block], grad[block], *args, slope, need_a, need_b)
        if need_a:
            grad_a[block] = block_a
        if need_b:
            grad_b[block] = block_b
    return grad_a, grad_b


class _IoUFamilyLoss(torch.autograd.Function):
    """Element-wise loss of ``[N, 4]`` pairs -> ``[N]`` with the hand-derived backward."""

    @staticmethod
    def forward(ctx: FunctionCtx, boxes1: Tensor, boxes2: Tensor, kind: str, eps: float) -> Tensor:
        loss, aspect_slope = _losses(boxes1, boxes2, kind, eps)
        # CIoU's angles (two atan2 per pair) are the dearest part to recompute; one [N] is kept
        ctx.save_for_backward(boxes1, boxes2, aspect_slope)
        ctx.kind, ctx.eps = kind, eps
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        boxes1, boxes2, aspect_slope = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[:2]
        grad1, grad2 = _grads(boxes1, boxes2, grad, ctx.kind, ctx.eps, aspect_slope, need_a, need_b)
        return grad1, grad2, None, None


def _iou_family_loss(boxes1: Tensor, boxes2: Tensor, kind: str, reduction: str, eps: float) -> Tensor:
    check_reduction(reduction)
    _check_eps(eps)
    boxes1, boxes2 = check_box_pairs(boxes1, boxes2)
    boxes1, boxes2 = torch.broadcast_tensors(boxes1, boxes2)
    batch_shape = boxes1.shape[:-1]
    loss = _IoUFamilyLoss.apply(boxes1.reshape(-1, 4), boxes2.reshape(-1, 4), kind, float(eps))
    return reduce_loss(loss.reshape(batch_shape), reduction)


@export("losses.box_iou_loss")
def box_iou_loss(
    boxes1: Tensor, boxes2: Tensor, mode: str = "linear", reduction: str = "none", eps: float = 1e-7
) -> Tensor:
    """IoU loss of matched pairs of boxes, with ``IoU = inter / (union + eps)``.

    ``mode`` picks the loss: ``"linear"`` ``1 - IoU``; ``"square"`` ``1 - IoU²``; ``"log"``
    ``-ln(max(IoU, eps))`` (UnitBox, Yu et al., 2016). The IoU loss has no gradient for
    boxes that do not overlap; :func:`generalized_box_iou_loss` and its kin do.

    Args:
        boxes1: ``[..., 4]`` xyxy, e.g. predictions.
        boxes2: ``[..., 4]`` xyxy, matched to ``boxes1`` (the shapes may broadcast).
        mode: ``"linear"``, ``"square"`` or ``"log"``.
        reduction: ``"none"`` (``[...]`` out), ``"mean"`` or ``"sum"``.
        eps: added to the union, and the floor of IoU in ``log`` mode.

    Returns:
        The loss, float32 (float64 for float64 input), in [0, 1] (``log``: [0, -ln eps]).
    """
    if mode not in IOU_LOSS_MODES:
        raise ValueError(f"mode must be one of {IOU_LOSS_MODES}, got {mode!r}")
    return _iou_family_loss(boxes1, boxes2, mode, reduction, eps)


@export("losses.generalized_box_iou_loss")
def generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """Generalized IoU loss ``1 - GIoU`` of matched pairs (Rezatofighi et al., CVPR 2019).

    ``GIoU = IoU - (C - U) / (C + eps)`` with ``C`` the area of the smallest enclosing box and
    ``U`` the union; equals ``torchvision.ops.generalized_box_iou_loss``.

    Args:
        boxes1: ``[..., 4]`` xyxy, e.g. predictions.
        boxes2: ``[..., 4]`` xyxy, matched to ``boxes1`` (the shapes may broadcast).
        reduction: ``"none"`` (``[...]`` out), ``"mean"`` or ``"sum"``.
        eps: added to the union and to ``C``.

    Returns:
        The loss in [0, 2], float32 (float64 for float64 input).
    """
    return _iou_family_loss(boxes1, boxes2, "giou", reduction, eps)


@export("losses.distance_box_iou_loss")
def distance_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """Distance IoU loss ``1 - IoU + ρ² / c²`` of matched pairs (Zheng et al., AAAI 2020).

    ``ρ`` is the distance between the box centres and ``c`` the diagonal of the smallest
    enclosing box; equals ``torchvision.ops.distance_box_iou_loss``.

    Args:
        boxes1: ``[..., 4]`` xyxy, e.g. predictions.
        boxes2: ``[..., 4]`` xyxy, matched to ``boxes1`` (the shapes may broadcast).
        reduction: ``"none"`` (``[...]`` out), ``"mean"`` or ``"sum"``.
        eps: added to the union and to ``c²``.

    Returns:
        The loss in [0, 2], float32 (float64 for float64 input).
    """
    return _iou_family_loss(boxes1, boxes2, "diou", reduction, eps)


@export("losses.complete_box_iou_loss")
def complete_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """Complete IoU loss ``1 - IoU + ρ² / c² + α v`` of matched pairs (Zheng et al., AAAI 2020).

    ``v = 4/π² (atan(w1/h1) - atan(w2/h2))²`` penalises different aspect ratios and
    ``α = v / (1 - IoU + v + eps)``. As in ``torchvision.ops.complete_box_iou_loss``, whose
    values this equals, ``α`` is a constant for autograd and is not gated by IoU. (torchvision
    ignores ``eps`` in its DIoU part and always uses 1e-7 there; here ``eps`` is used
    throughout, so the two agree at the default.)

    Args:
        boxes1: ``[..., 4]`` xyxy, e.g. predictions.
        boxes2: ``[..., 4]`` xyxy, matched to ``boxes1`` (the shapes may broadcast).
        reduction: ``"none"`` (``[...]`` out), ``"mean"`` or ``"sum"``.
        eps: added to the union, to ``c²`` and to the denominator of ``α``.

    Returns:
        The loss in [0, 3), float32 (float64 for float64 input).
    """
    return _iou_family_loss(boxes1, boxes2, "ciou", reduction, eps)


class _BoxLoss(nn.Module):
    """Holds and checks the hyper-parameters that every IoU-family loss module shares."""

    def __init__(self, reduction: str, eps: float, loss_weight: float) -> None:
        super().__init__()
        check_reduction(reduction)
        _check_eps(eps)
        if not isinstance(loss_weight, int | float):
            raise TypeError(f"loss_weight must be a number, got {type(loss_weight).__name__}")
        self.reduction = reduction
        self.eps = eps
        self.loss_weight = loss_weight

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, eps={self.eps}, loss_weight={self.loss_weight}"


@export("losses.IoULoss")
class IoULoss(_BoxLoss):
    """See :func:`box_iou_loss`; the result is multiplied by ``loss_weight``."""

    def __init__(self, mode: str = "linear", reduction: str = "none", eps: float = 1e-7, loss_weight: float = 1.0):
        super().__init__(reduction, eps, loss_weight)
        if mode not in IOU_LOSS_MODES:
            raise ValueError(f"mode must be one of {IOU_LOSS_MODES}, got {mode!r}")
        self.mode = mode

    def forward(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        return self.loss_weight * box_iou_loss(boxes1, boxes2, self.mode, self.reduction, self.eps)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, {super().extra_repr()}"


@export("losses.GIoULoss")
class GIoULoss(_BoxLoss):
    """See :func:`generalized_box_iou_loss`; the result is multiplied by ``loss_weight``."""

    def __init__(self, reduction: str = "none", eps: float = 1e-7, loss_weight: float = 1.0) -> None:
        super().__init__(reduction, eps, loss_weight)

    def forward(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        return self.loss_weight * generalized_box_iou_loss(boxes1, boxes2, self.reduction, self.eps)


@export("losses.DIoULoss")
class DIoULoss(_BoxLoss):
    """See :func:`distance_box_iou_loss`; the result is multiplied by ``loss_weight``."""

    def __init__(self, reduction: str = "none", eps: float = 1e-7, loss_weight: float = 1.0) -> None:
        super().__init__(reduction, eps, loss_weight)

    def forward(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        return self.loss_weight * distance_box_iou_loss(boxes1, boxes2, self.reduction, self.eps)


@export("losses.CIoULoss")
class CIoULoss(_BoxLoss):
    """See :func:`complete_box_iou_loss`; the result is multiplied by ``loss_weight``."""

    def __init__(self, reduction: str = "none", eps: float = 1e-7, loss_weight: float = 1.0) -> None:
        super().__init__(reduction, eps, loss_weight)

    def forward(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        return self.loss_weight * complete_box_iou_loss(boxes1, boxes2, self.reduction, self.eps)
