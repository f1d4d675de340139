"""Keypoint geometry for top-down pose estimation: crop transforms, OKS, flips, heatmaps.

Keypoints are ``[..., K, 2]`` ``(x, y)`` or ``[..., K, 3]`` ``(x, y, v)`` with COCO's
visibility codes; coordinates are continuous, as everywhere in sightkit: pixel ``(i, j)``
covers ``[j, j+1) x [i, i+1)``, so its centre is ``(j + 0.5, i + 0.5)``. A heatmap cell
``(i, j)`` of a map with stride ``s`` stands for the point ``((j + 0.5) s, (i + 0.5) s)``.
With this convention a crop, a resize and a horizontal flip are exact affine maps of the
coordinates; the half-pixel corrections of the "unbiased data processing" paper (Huang et
al., CVPR 2020) are built in rather than patched on.

All functions are pure tensor functions that batch over leading dimensions. Affine maps are
``[..., 2, 3]`` matrices ``[A | t]`` acting on column vectors: ``p' = A p + t``.

References: Xiao et al., "Simple Baselines for Human Pose Estimation and Tracking", ECCV
2018 (crops, flip test, quarter-offset decoding); Zhang et al., "Distribution-Aware
Coordinate Representation for Human Pose Estimation" (DARK), CVPR 2020 (Taylor decoding);
COCO keypoint evaluation (object keypoint similarity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from sightkit._api import export

#: COCO's per-keypoint OKS sigmas, in the order of :data:`sightkit.data.COCO_KEYPOINT_NAMES`.
COCO_KEYPOINT_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
export("ops.COCO_KEYPOINT_SIGMAS")(COCO_KEYPOINT_SIGMAS)

DECODE_METHODS = ("argmax", "quarter", "taylor")


def _float(tensor: Tensor, name: str) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype == torch.float64:
        return tensor
    return tensor.float()


def _check_points(points: Tensor, name: str = "keypoints") -> Tensor:
    points = _float(points, name)
    if points.ndim < 2 or points.shape[-1] < 2:
        raise ValueError(f"{name} must have shape [..., K, 2] or [..., K, 3], got {tuple(points.shape)}")
    return points


# --------------------------------------------------------------------------- crops


@export("ops.box_to_center_size")
def box_to_center_size(boxes: Tensor, aspect_ratio: float, padding: float = 1.25) -> tuple[Tensor, Tensor]:
    """The crop region of a person box: its centre and a size with the model input's aspect
    ratio that contains the box, enlarged by ``padding`` (SimpleBaseline: 1.25).

    Args:
        boxes: ``[..., 4]`` ``xyxy`` pixels.
        aspect_ratio: width / height of the model input (192 / 256 for 256x192).
        padding: factor applied to both sides after the aspect-ratio fix.

    Returns:
        ``center`` ``[..., 2]`` and ``size`` ``[..., 2]`` as ``(w, h)``, with ``w / h == aspect_ratio``.
    """
    boxes = _float(boxes, "boxes")
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4] (xyxy), got {tuple(boxes.shape)}")
    if not aspect_ratio > 0 or not padding > 0:
        raise ValueError(f"aspect_ratio and padding must be > 0, got {aspect_ratio} and {padding}")
    center = (boxes[..., :2] + boxes[..., 2:]) / 2
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    w, h = torch.maximum(w, h * aspect_ratio), torch.maximum(h, w / aspect_ratio)
    return center, torch.stack([w, h], -1) * padding


@export("ops.get_affine_transform")
def get_affine_transform(
    center: Tensor,
    size: Tensor,
    output_size: Sequence[int],
    rotation: Tensor | float = 0.0,
    inverse: bool = False,
) -> Tensor:
    """The affine map that crops the region ``(center, size)``, turned by ``rotation``, to an
    output of ``output_size``.

    The region's centre goes to the output's centre ``(W / 2, H / 2)``, its sides to the
    output's sides: ``p' = S R(-rotation) (p - center) + (W / 2, H / 2)`` with
    ``S = diag(W / w, H / h)`` and ``R`` the rotation in image axes (x right, y down), so
    the crop window is the region turned by ``rotation`` degrees (clockwise on the screen)
    and its content appears turned the other way.

    Args:
        center: ``[..., 2]`` region centres, pixels.
        size: ``[..., 2]`` region sizes ``(w, h)``, pixels, ``> 0``.
        output_size: ``(W, H)`` of the output, pixels.
        rotation: degrees, a number or ``[...]``.
        inverse: return the output-to-image map instead.

    Returns:
        ``[..., 2, 3]`` matrices (float32; float64 for float64 inputs).
    """
    center, size = _float(center, "center"), _float(size, "size")
    if center.shape[-1:] != (2,) or size.shape[-1:] != (2,):
        raise ValueError(f"center and size must be [..., 2], got {tuple(center.shape)} and {tuple(size.shape)}")
    if len(output_size) != 2 or min(output_size) <= 0:
        raise ValueError(f"output_size must be (W, H) with positive sides, got {tuple(output_size)}")
    dtype = torch.promote_types(center.dtype, size.dtype)
    center, size = center.to(dtype), size.to(dtype)
    angle = torch.as_tensor(rotation, dtype=dtype, device=center.device) * (math.pi / 180)
    angle = angle.expand(torch.broadcast_shapes(angle.shape, center.shape[:-1], size.shape[:-1]))
    cos, sin = torch.cos(angle), torch.sin(angle)
    out = torch.tensor([output_size[0], output_size[1]], dtype=dtype, device=center.device)
    scale = out / size  # [..., 2]
    sx, sy = scale[..., 0], scale[..., 1]
    # S R(-θ) with R(-θ) = [[cos, sin], [-sin, cos]].
    linear = torch.stack([torch.stack([sx * cos, sx * sin], -1), torch.stack([-sy * sin, sy * cos], -1)], -2)
    if inverse:
        # p = R(θ) S^-1 (p' - o) + c
        back = torch.stack(
            [torch.stack([cos / sx, -sin / sy], -1), torch.stack([sin / sx, cos / sy], -1)],
            -2,
        )
        shift = center - (back @ (out / 2).unsqueeze(-1)).squeeze(-1)
        return torch.cat([back, shift.unsqueeze(-1)], -1)
    shift = out / 2 - (linear @ center.unsqueeze(-1)).squeeze(-1)
    return torch.cat([linear, shift.unsqueeze(-1)], -1)


@export("ops.invert_affine")
def invert_affine(matrix: Tensor) -> Tensor:
    """The inverse of affine maps ``[..., 2, 3]``: ``[A^-1 | -A^-1 t]``."""
    matrix = _float(matrix, "matrix")
    if matrix.shape[-2:] != (2, 3):
        raise ValueError(f"matrix must have shape [..., 2, 3], got {tuple(matrix.shape)}")
    inverse = torch.linalg.inv(matrix[..., :2])
    return torch.cat([inverse, -(inverse @ matrix[..., 2:])], -1)


@export("ops.affine_keypoints")
def affine_keypoints(keypoints: Tensor, matrix: Tensor) -> Tensor:
    """Apply affine maps ``[..., 2, 3]`` to keypoints ``[..., K, D]`` (``D >= 2``); columns
    after ``x, y`` (visibility, scores) are kept as they are."""
    points = _check_points(keypoints)
    matrix = _float(matrix, "matrix")
    if matrix.shape[-2:] != (2, 3):
        raise ValueError(f"matrix must have shape [..., 2, 3], got {tuple(matrix.shape)}")
    dtype = torch.promote_types(points.dtype, matrix.dtype)
    points, matrix = points.to(dtype), matrix.to(dtype)
    xy = points[..., :2] @ matrix[..., :2].transpose(-1, -2) + matrix[..., 2].unsqueeze(-2)
    return torch.cat([xy, points[..., 2:]], -1)


# --------------------------------------------------------------------------- flips


def _flip_index(flip_pairs: Sequence[tuple[int, int]], num_keypoints: int) -> list[int]:
    index = list(range(num_keypoints))
    for i, j in flip_pairs:
        if not (0 <= i < num_keypoints and 0 <= j < num_keypoints):
            raise ValueError(f"flip_pairs: pair {(i, j)} is out of range for {num_keypoints} keypoints")
        index[i], index[j] = j, i
    return index


@export("ops.flip_keypoints")
def flip_keypoints(keypoints: Tensor, width: float, flip_pairs: Sequence[tuple[int, int]]) -> Tensor:
    """Mirror keypoints ``[..., K, D]`` left-right in an image ``width`` wide (``x -> width - x``)
    and swap the left/right pairs, so the "left wrist" slot again holds a left wrist.
    ``width=0`` mirrors coordinates centred on the image (``x -> -x``)."""
    points = _check_points(keypoints)
    mirrored = torch.cat([width - points[..., :1], points[..., 1:]], -1)
    return mirrored[..., _flip_index(flip_pairs, points.shape[-2]), :]


@export("ops.flip_heatmaps")
def flip_heatmaps(heatmaps: Tensor, flip_pairs: Sequence[tuple[int, int]]) -> Tensor:
    """Mirror heatmaps ``[..., K, H, W]`` left-right and swap the left/right channels: the
    heatmaps of a flipped image, brought back to the original. No shift is needed, as cell
    ``j`` stands for ``x = (j + 0.5) s`` and mirrors exactly onto cell ``W - 1 - j``."""
    if not isinstance(heatmaps, Tensor) or heatmaps.ndim < 3:
        raise ValueError(f"heatmaps must be a tensor [..., K, H, W], got {getattr(heatmaps, 'shape', heatmaps)}")
    return heatmaps.flip(-1)[..., _flip_index(flip_pairs, heatmaps.shape[-3]), :, :]


# --------------------------------------------------------------------------- heatmaps


@export("ops.render_heatmaps")
def render_heatmaps(keypoints: Tensor, size: Sequence[int], sigma: float = 2.0) -> Tensor:
    """Gaussian heatmaps of keypoints: ``exp(-d^2 / (2 sigma^2))`` with ``d`` the distance
    from each cell's centre to the keypoint, peak 1 (below 1 between cell centres).

    Args:
        keypoints: ``[..., K, 2]`` (or ``[..., K, 3]``) in heatmap cells: cell ``(i, j)``
            spans ``[j, j+1) x [i, i+1)``.
        size: ``(H, W)`` of the heatmaps.
        sigma: the Gaussian's standard deviation, cells (SimpleBaseline: 2 at 64x48).

    Returns:
        ``[..., K, H, W]`` in ``[0, 1]``.
    """
    points = _check_points(keypoints)
    height, width = size
    ys = torch.arange(height, dtype=points.dtype, device=points.device) + 0.5
    xs = torch.arange(width, dtype=points.dtype, device=points.device) + 0.5
    dx = (xs - points[..., 0:1]).square()  # [..., K, W]
    dy = (ys - points[..., 1:2]).square()  # [..., K, H]
    # exp(-(dx + dy) / 2s^2) = exp(-dy / 2s^2) exp(-dx / 2s^2): an outer product, no [H, W] distance grid.
    scale = -0.5 / sigma**2
    return torch.exp(dy * scale).unsqueeze(-1) * torch.exp(dx * scale).unsqueeze(-2)


@export("ops.decode_heatmaps")
def decode_heatmaps(heatmaps: Tensor, method: str = "taylor", blur_kernel: int = 0) -> tuple[Tensor, Tensor]:
    """Keypoint locations from heatmaps, to a fraction of a cell.

    Args:
        heatmaps: ``[..., K, H, W]``.
        method: ``"argmax"`` (the best cell's centre), ``"quarter"`` (SimpleBaseline: a
            quarter cell towards the higher neighbour on each axis) or ``"taylor"`` (DARK: the
            maximum of the second-order Taylor expansion of the log-heatmap around the best
            cell, exact for a Gaussian peak; falls back to the cell centre on the border or
            where the log-heatmap is not concave).
        blur_kernel: odd size of a Gaussian blur applied before the Taylor step (DARK's
            modulation, which makes a network's peaks Gaussian-like; 0: none).

    Returns:
        ``points`` ``[..., K, 2]`` in heatmap cells (multiply by the stride for input
        pixels) and ``scores`` ``[..., K]``, the heatmap value at the best cell.
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"method must be one of {DECODE_METHODS}, got {method!r}")
    if not isinstance(heatmaps, Tensor) or heatmaps.ndim < 3:
        raise ValueError(f"heatmaps must be a tensor [..., K, H, W], got {getattr(heatmaps, 'shape', heatmaps)}")
    if blur_kernel < 0 or (blur_kernel and blur_kernel % 2 == 0):
        raise ValueError(f"blur_kernel must be 0 or an odd size, got {blur_kernel}")
    maps = _float(heatmaps, "heatmaps")
    height, width = maps.shape[-2:]
    flat = maps.flatten(-2)
    scores, index = flat.max(-1)
    row, col = index // width, index % width
    points = torch.stack([col, row], -1).to(maps.dtype) + 0.5
    if method == "argmax" or maps.numel() == 0:
        return points, scores
    if method == "quarter":
        return points + 0.25 * _neighbour_signs(maps, row, col), scores
    if blur_kernel:
        peak = maps.amax((-2, -1), keepdim=True)
        shape = maps.shape
        maps = TF.gaussian_blur(maps.reshape(-1, 1, height, width), [blur_kernel, blur_kernel]).reshape(shape)
        maps = maps * peak / maps.amax((-2, -1), keepdim=True).clamp(min=torch.finfo(maps.dtype).tiny)
    return points + _taylor_offset(maps, row, col), scores


def _gather(maps: Tensor, row: Tensor, col: Tensor) -> Tensor:
    height, width = maps.shape[-2:]
    index = (row.clamp(0, height - 1) * width + col.clamp(0, width - 1)).unsqueeze(-1)
    return maps.flatten(-2).gather(-1, index).squeeze(-1)


def _neighbour_signs(maps: Tensor, row: Tensor, col: Tensor) -> Tensor:
    height, width = maps.shape[-2:]
    dx = torch.sign(_gather(maps, row, col + 1) - _gather(maps, row, col - 1))
    dy = torch.sign(_gather(maps, row + 1, col) - _gather(maps, row - 1, col))
    dx = torch.where((col > 0) & (col < width - 1), dx, 0.0)
    dy = torch.where((row > 0) & (row < height - 1), dy, 0.0)
    return torch.stack([dx, dy], -1)


def _taylor_offset(maps: Tensor, row: Tensor, col: Tensor) -> Tensor:
    height, width = maps.shape[-2:]
    tiny = 1e-10
    log = torch.log(maps.clamp(min=tiny))

    def at(dy: int, dx: int) -> Tensor:
        return _gather(log, row + dy, col + dx)

    centre = at(0, 0)
    gx, gy = 0.5 * (at(0, 1) - at(0, -1)), 0.5 * (at(1, 0) - at(-1, 0))
    hxx, hyy = at(0, 1) - 2 * centre + at(0, -1), at(1, 0) - 2 * centre + at(-1, 0)
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy.square()
    # A maximum needs a negative-definite Hessian; elsewhere the expansion has no maximum.
    usable = (det > tiny) & (hxx < 0)
    usable &= (col > 0) & (col < width - 1) & (row > 0) & (row < height - 1)
    safe = torch.where(usable, det, 1.0)
    # offset = -H^-1 g, H^-1 = [[hyy, -hxy], [-hxy, hxx]] / det
    ox = -(hyy * gx - hxy * gy) / safe
    oy = -(hxx * gy - hxy * gx) / safe
    offset = torch.stack([ox, oy], -1).clamp(-1.0, 1.0)
    return torch.where(usable.unsqueeze(-1), offset, 0.0)


# --------------------------------------------------------------------------- similarity


def _sigmas(sigmas: Sequence[float] | Tensor | None, num_keypoints: int, like: Tensor) -> Tensor:
    values = torch.as_tensor(COCO_KEYPOINT_SIGMAS if sigmas is None else sigmas, dtype=like.dtype, device=like.device)
    if values.shape != (num_keypoints,):
        raise ValueError(
            f"sigmas must have one value per keypoint ({num_keypoints}), got {tuple(values.shape)}"
            + (" (the default is COCO's 17)" if sigmas is None else "")
        )
    return values


@export("ops.keypoint_oks")
def keypoint_oks(
    keypoints1: Tensor,
    keypoints2: Tensor,
    areas: Tensor,
    sigmas: Sequence[float] | Tensor | None = None,
    boxes: Tensor | None = None,
) -> Tensor:
    """Pairwise object keypoint similarity of predictions against ground truth, as COCO's
    ``COCOeval.computeOks``.

    ``OKS = mean over the labelled ground-truth keypoints of exp(-d^2 / (2 area (2 sigma)^2))``.
    A ground truth without labelled keypoints is compared through the distance of every
    predicted keypoint to its box enlarged by the box size on each side (``boxes``; without
    them its OKS is 0).

    Args:
        keypoints1: predictions ``[N, K, 2|3]`` (a visibility column is ignored).
        keypoints2: ground truth ``[M, K, 3]`` with COCO visibility.
        areas: ``[M]`` ground-truth areas (COCO's ``area``, pixels²).
        sigmas: ``[K]`` per-keypoint constants (default :data:`COCO_KEYPOINT_SIGMAS`).
        boxes: ``[M, 4]`` ``xyxy`` ground-truth boxes, used only for ground truth without
            labelled keypoints.

    Returns:
        ``[N, M]`` in ``[0, 1]``.
    """
    pred = _check_points(keypoints1, "keypoints1")
    gt = _check_points(keypoints2, "keypoints2")
    if pred.ndim != 3 or gt.ndim != 3 or gt.shape[-1] != 3 or pred.shape[1] != gt.shape[1]:
        raise ValueError(
            "keypoints1 must be [N, K, 2|3] and keypoints2 [M, K, 3] with the same K, got "
            f"{tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    areas = _float(areas, "areas")
    if areas.shape != gt.shape[:1]:
        raise ValueError(f"areas must have shape [M] = {tuple(gt.shape[:1])}, got {tuple(areas.shape)}")
    dtype = torch.promote_types(pred.dtype, gt.dtype)
    pred, gt, areas = pred.to(dtype), gt.to(dtype), areas.to(dtype)
    variances = (2 * _sigmas(sigmas, gt.shape[1], gt)).square()  # [K]
    labelled = gt[..., 2] > 0  # [M, K]
    dx = pred[:, None, :, 0] - gt[None, :, :, 0]  # [N, M, K]
    dy = pred[:, None, :, 1] - gt[None, :, :, 1]
    has_labels = labelled.any(-1)  # [M]
    if boxes is not None:
        boxes = _float(boxes, "boxes").to(dtype)
        if boxes.shape != (gt.shape[0], 4):
            raise ValueError(f"boxes must have shape [M, 4] = ({gt.shape[0]}, 4), got {tuple(boxes.shape)}")
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        x0, x1 = (boxes[:, 0] - w)[None, :, None], (boxes[:, 2] + w)[None, :, None]
        y0, y1 = (boxes[:, 1] - h)[None, :, None], (boxes[:, 3] + h)[None, :, None]
        px, py = pred[:, None, :, 0], pred[:, None, :, 1]
        outside_x = (x0 - px).clamp(min=0) + (px - x1).clamp(min=0)
        outside_y = (y0 - py).clamp(min=0) + (py - y1).clamp(min=0)
        dx = torch.where(has_labels[None, :, None], dx, outside_x)
        dy = torch.where(has_labels[None, :, None], dy, outside_y)
    # COCO adds the smallest float64 spacing so that a zero area does not divide by zero.
    e = (dx.square() + dy.square()) / variances / (areas[None, :, None] + 2.220446049250313e-16) / 2
    similarity = torch.exp(-e)
    counted = torch.where(has_labels[:, None], labelled, True)  # [M, K]: all keypoints for box-only GT
    total = (similarity * counted).sum(-1) / counted.sum(-1)
    if boxes is None:
        total = torch.where(has_labels[None, :], total, 0.0)
    return total


@export("ops.oks_nms")
def oks_nms(
    keypoints: Tensor,
    scores: Tensor,
    areas: Tensor,
    threshold: float = 0.9,
    sigmas: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Non-maximum suppression of poses by OKS: keep the best-scoring pose, drop every other
    whose OKS with it exceeds ``threshold``, repeat (SimpleBaseline's ``oks_nms``; the OKS of
    two poses uses the mean of their areas and all their keypoints).

    Args:
        keypoints: ``[N, K, 2|3]`` poses.
        scores: ``[N]``.
        areas: ``[N]`` pose areas (e.g. the areas of their boxes).
        threshold: OKS above which the lower-scoring pose is dropped.

    Returns:
        int64 indices of the kept poses, by decreasing score.
    """
    points = _check_points(keypoints)
    if points.ndim != 3 or scores.shape != points.shape[:1] or areas.shape != points.shape[:1]:
        raise ValueError(
            f"keypoints must be [N, K, 2|3] with scores and areas [N], got {tuple(points.shape)}, "
            f"{tuple(scores.shape)} and {tuple(areas.shape)}"
        )
    if points.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=points.device)
    variances = (2 * _sigmas(sigmas, points.shape[1], points)).square()
    distance = (points[:, None, :, :2] - points[None, :, :, :2]).square().sum(-1)  # [N, N, K]
    mean_area = (areas[:, None] + areas[None, :]).to(points.dtype) / 2
    similarity = torch.exp(-distance / variances / (mean_area[..., None] + 2.220446049250313e-16) / 2).mean(-1)
    order = torch.argsort(scores, descending=True, stable=True)
    # The greedy sweep is sequential by nature (N is the number of people in one image), so it
    # runs on the CPU after one transfer.
    overlap = (similarity > threshold).cpu()
    suppressed = torch.zeros(points.shape[0], dtype=torch.bool)
    keep = []
    for index in order.tolist():
        if suppressed[index]:
            continue
        keep.append(index)
        suppressed |= overlap[index]
    return torch.tensor(keep, dtype=torch.int64, device=points.device)
