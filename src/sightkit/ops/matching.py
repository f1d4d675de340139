"""Optimal one-to-one assignment: the linear sum assignment problem and DETR's Hungarian matcher.

:func:`linear_sum_assignment` solves the problem with scipy (Crouse, "On implementing 2D
rectangular assignment algorithms", IEEE TAES 2016), the reference solver, and speaks tensors.
:class:`HungarianMatcher` builds the matching cost of set-prediction detectors (DETR, Carion et
al., ECCV 2020; the focal class cost of Deformable DETR, Zhu et al., ICLR 2021) one image at a
time and solves it per image.

Policy on non-finite costs: a NaN or an infinity in a cost matrix is an error (``ValueError``
that says where it is), never a silently forbidden or last-resort pair. In training a NaN cost
means the model or the data has gone wrong, and matching around it hides that until the loss
is NaN too. To forbid a pair, give it a large finite cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.ops.boxes import safe_divide

CLASS_COSTS = ("ce", "focal")


def _solve(cost: np.ndarray, context: str | None) -> tuple[np.ndarray, np.ndarray]:
    """scipy's solver on a finite ``[N, M]`` array; ``context`` says where the array came from."""
    finite = np.isfinite(cost)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        where = "cost" if context is None else f"cost of {context}"
        raise ValueError(
            f"{where} must be finite (NaN and Inf are not allowed; give a forbidden pair a large finite cost), "
            f"got {int((~finite).sum())} non-finite entries, the first {cost[first]} at {list(first)}"
        )
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return rows.astype(np.int64, copy=False), cols.astype(np.int64, copy=False)


@export("ops.linear_sum_assignment")
def linear_sum_assignment(cost: Tensor, *, context: str | None = None) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of the rows of ``cost`` to its columns.

    Solved by :func:`scipy.optimize.linear_sum_assignment` on the CPU (shortest augmenting
    paths, Crouse 2016); the matrix is copied there once, as float64.

    Args:
        cost: ``[N, M]`` real tensor, any dtype and device; rectangular allowed, ``N`` or ``M``
            may be 0. Must be finite (see the module's policy on NaN and Inf).
        context: where the matrix comes from (e.g. ``"image 3"``), put into error messages.

    Returns:
        ``(row_idx, col_idx)``: int64 tensors ``[min(N, M)]`` on ``cost.device``, ``row_idx``
        ascending, such that ``cost[row_idx, col_idx].sum()`` is the least over all ways of
        pairing ``min(N, M)`` rows with as many distinct columns.

    Raises:
        TypeError: ``cost`` is not a tensor, or is complex.
        ValueError: ``cost`` is not 2-D, or holds NaN or Inf.

    Example::

        >>> linear_sum_assignment(torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]]))
        (tensor([0, 1, 2]), tensor([1, 0, 2]))
    """
    if not isinstance(cost, Tensor):
        raise TypeError(f"cost must be a torch.Tensor of shape [N, M], got {type(cost).__name__}")
    if cost.is_complex():
        raise TypeError(f"cost must be a real tensor, got dtype {cost.dtype}")
    if cost.ndim != 2:
        raise ValueError(f"cost must have shape [N, M], got {tuple(cost.shape)}")
    rows, cols = _solve(cost.detach().to("cpu", torch.float64).numpy(), context)
    return torch.from_numpy(rows).to(cost.device), torch.from_numpy(cols).to(cost.device)


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _check_outputs(outputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    if not isinstance(outputs, Mapping):
        raise TypeError(f"outputs must be a mapping with 'pred_logits' and 'pred_boxes', got {type(outputs).__name__}")
    missing = [key for key in ("pred_logits", "pred_boxes") if key not in outputs]
    if missing:
        raise ValueError(f"outputs must contain 'pred_logits' and 'pred_boxes', missing {missing}; got {list(outputs)}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    for key, value in (("pred_logits", logits), ("pred_boxes", boxes)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise TypeError(f"outputs[{key!r}] must be a floating-point tensor, got {_describe(value)}")
    if logits.ndim != 3:
        raise ValueError(f"outputs['pred_logits'] must have shape [B, Q, C], got {tuple(logits.shape)}")
    if boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"outputs['pred_boxes'] must have shape [B, Q, 4] = {[*logits.shape[:2], 4]} to match "
            f"outputs['pred_logits'] {tuple(logits.shape)}, got {tuple(boxes.shape)}"
        )
    return logits, boxes


def _check_targets(
    targets: Sequence[Mapping[str, Tensor]], batch: int, classes: int, device: torch.device
) -> tuple[Tensor, Tensor, list[int]]:
    """Validate the targets and concatenate them on ``device``: labels ``[S]``, boxes ``[S, 4]``, sizes."""
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
        raise TypeError(f"targets must be a list of B = {batch} dicts, got {type(targets).__name__}")
    if len(targets) != batch:
        raise ValueError(f"targets must hold one dict per image, B = {batch} (from outputs), got {len(targets)}")
    labels, boxes = [], []
    for b, target in enumerate(targets):
        if not isinstance(target, Mapping) or "labels" not in target or "boxes" not in target:
            raise ValueError(f"targets[{b}] must be a dict with 'labels' and 'boxes', got {target!r:.80}")
        label, box = target["labels"], target["boxes"]
        integer = isinstance(label, Tensor) and not (label.is_floating_point() or label.is_complex())
        if not integer or label.dtype == torch.bool or label.ndim != 1:
            raise ValueError(f"targets[{b}]['labels'] must be an integer tensor of shape [T], got {_describe(label)}")
        if not isinstance(box, Tensor) or not box.is_floating_point() or box.shape != (len(label), 4):
            raise ValueError(
                f"targets[{b}]['boxes'] must be a floating-point tensor [T, 4] with T = {len(label)} "
                f"(the number of labels), got {_describe(box)}"
            )
        labels.append(label.to(device, torch.int64))
        boxes.append(box.to(device))
    all_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=device)
    if all_labels.numel():
        # One host synchronisation for all images; indexing with a bad label on a GPU would
        # fail later with an opaque device-side assert instead.
        low, high = torch.stack(torch.aminmax(all_labels)).tolist()
        if low < 0 or high >= classes:
            for b, label in enumerate(labels):
                bad = label[(label < 0) | (label >= classes)]
                if bad.numel():
                    raise ValueError(
                        f"targets[{b}]['labels'] must lie in [0, {classes}) (C of outputs['pred_logits']), "
                        f"got {bad[0].item()}"
                    )
    all_boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4, device=device)
    return all_labels, all_boxes, [len(label) for label in labels]


@export("ops.HungarianMatcher")
class HungarianMatcher(nn.Module):
    """One-to-one matching of predicted to ground-truth objects at least total cost (DETR,
    Carion et al., ECCV 2020). No parameters, no gradient.

    The cost of query ``q`` for target ``t`` of the same image is::

        cost_class * C_class(q, t) + cost_bbox * |b_q - b_t|_1 - cost_giou * GIoU(b_q, b_t)

    with the L1 distance on ``cxcywh`` boxes and GIoU on their ``xyxy`` form. ``C_class`` is

    - ``"ce"`` (DETR): ``-softmax(logits_q)[label_t]``;
    - ``"focal"`` (Deformable DETR, Zhu et al., ICLR 2021), with ``p = sigmoid(logits_q[label_t])``:
      ``alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p))``.

    Each image's cost is its own ``[Q, T_b]`` block; DETR's all-pairs ``[B*Q, sum T]`` matrix
    (``B`` times more work, mostly thrown away) is never formed. The blocks are computed on the
    predictions' device, copied to the host once for the whole batch, and solved per image by
    :func:`scipy.optimize.linear_sum_assignment`.

    Args:
        cost_class: weight of the class cost.
        cost_bbox: weight of the L1 box cost.
        cost_giou: weight of the GIoU cost.
        class_cost: ``"ce"`` or ``"focal"``.
        alpha: focal cost's weight of the positive term (``"focal"`` only).
        gamma: focal cost's focusing exponent (``"focal"`` only).

    Inputs of :meth:`forward`:
        outputs: ``{"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4]}``, boxes ``cxcywh``
            normalised to [0, 1] (width and height >= 0). For ``"ce"``, ``C`` counts the
            no-object class as DETR does. Any floating dtype; the cost is float32 or wider.
        targets: ``B`` dicts ``{"labels": [T_b] int, "boxes": [T_b, 4] cxcywh}`` with labels
            in ``[0, C)``.

    Returns:
        A list of ``B`` pairs ``(pred_idx, tgt_idx)``: int64 tensors ``[min(Q, T_b)]`` on the
        device of ``pred_logits``, sorted by ``pred_idx``; query ``pred_idx[k]`` is matched to
        target ``tgt_idx[k]``. An image without targets gets two empty tensors. An image with
        more targets than queries (``T_b > Q``) is not an error: every query is matched, and
        the ``T_b - Q`` targets whose exclusion costs least stay unmatched.

    Raises:
        TypeError, ValueError: malformed ``outputs`` or ``targets`` (the message names the
            entry and the image), labels outside ``[0, C)``, or a non-finite cost, whose
            message names the image and which of its inputs holds NaN or Inf.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        class_cost: str = "ce",
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.cost_class = _check_weight("cost_class", cost_class)
        self.cost_bbox = _check_weight("cost_bbox", cost_bbox)
        self.cost_giou = _check_weight("cost_giou", cost_giou)
        if self.cost_class == self.cost_bbox == self.cost_giou == 0:
            raise ValueError("cost_class, cost_bbox and cost_giou must not all be 0")
        if class_cost not in CLASS_COSTS:
            raise ValueError(f"class_cost must be one of {CLASS_COSTS}, got {class_cost!r}")
        self.class_cost = class_cost
        self.alpha = _check_weight("alpha", alpha)
        if self.alpha > 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
        self.gamma = _check_weight("gamma", gamma)

    def extra_repr(self) -> str:
        focal = f", alpha={self.alpha}, gamma={self.gamma}" if self.class_cost == "focal" else ""
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"class_cost={self.class_cost!r}{focal}"
        )

    @torch.no_grad()
    def forward(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        logits, pred_boxes = _check_outputs(outputs)
        labels, boxes, sizes = _check_targets(targets, len(logits), logits.shape[-1], logits.device)
        if not sizes:
            return []
        # The only copy of the costs to the host, for all images at once.
        blocks = np.split(self._cost(logits, pred_boxes, labels, boxes, sizes).cpu().numpy(), np.cumsum(sizes)[:-1])
        pairs = []
        for b, block in enumerate(blocks):
            if not np.isfinite(block).all():
                raise _nonfinite_cost_error(b, logits[b], pred_boxes[b], boxes.split(sizes)[b])
            pairs.append(_solve(block.T, context=f"image {b}"))
        # One host-to-device copy for all images.
        counts = [len(pred_idx) for pred_idx, _ in pairs]
        indices = np.concatenate([np.stack(pair) for pair in pairs], axis=1)
        pred_idx, tgt_idx = torch.from_numpy(indices).to(logits.device)
        return list(zip(pred_idx.split(counts), tgt_idx.split(counts), strict=True))

    @torch.no_grad()
    def cost_matrices(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> list[Tensor]:
        """The per-image cost matrices ``[Q, T_b]`` that :meth:`forward` minimises, on the
        predictions' device (float32 or wider). Same inputs as :meth:`forward`."""
        logits, pred_boxes = _check_outputs(outputs)
        labels, boxes, sizes = _check_targets(targets, len(logits), logits.shape[-1], logits.device)
        if not sizes:
            return []
        return [block.T for block in self._cost(logits, pred_boxes, labels, boxes, sizes).split(sizes)]

    def _cost(self, logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor, sizes: list[int]) -> Tensor:
        """``[S, Q]`` with ``S = sum T_b``: row ``s`` is the cost of every query of target ``s``'s
        image for target ``s``; rows are grouped by image, so the blocks are its row slices.

        The whole batch is one set of tensor ops over ``[S, Q]``, each target's row gathering its
        own image's queries (DETR's ``[B*Q, sum T]`` matrix would be ``B`` times larger). The box
        maths runs on coordinate planes, ``[S, Q]`` each and contiguous, gathered by one index
        op: on ``[S, Q, 4]`` boxes every element-wise op would read a strided last dimension and
        not vectorise. Each op is large enough (``S Q`` elements, 126k at B=16, Q=300) for torch
        to split over its intra-op threads."""
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logits = logits.to(dtype)
        # output_size spares a host synchronisation on GPUs.
        image = torch.repeat_interleave(torch.tensor(sizes, device=logits.device), output_size=len(labels))
        if self.class_cost == "ce":
            cost = logits.softmax(-1)[image, :, labels].mul_(-self.cost_class)
        else:
            cost = _focal_class_cost(logits[image, :, labels], self.alpha, self.gamma).mul_(self.cost_class)
        queries = _box_planes(pred_boxes.to(dtype)).index_select(1, image)  # [9, S, Q]
        targets = _box_planes(boxes.to(dtype))[:, :, None]  # [9, S, 1]
        cost.add_((queries[:4] - targets[:4]).abs_().sum(0), alpha=self.cost_bbox)
        return cost.sub_(_giou_planes(queries[4:], targets[4:]), alpha=self.cost_giou)


def _box_planes(boxes: Tensor) -> Tensor:
    """``cxcywh`` boxes ``[..., 4]`` -> ``[9, ...]``: cx, cy, w, h, x1, y1, x2, y2 and the area."""
    cx, cy, w, h = boxes.unbind(-1)
    x1, y1, x2, y2 = cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h
    return torch.stack([cx, cy, w, h, x1, y1, x2, y2, (x2 - x1) * (y2 - y1)])


def _giou_planes(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of boxes given as planes ``[5, ...]`` (x1, y1, x2, y2, area; ``a`` and ``b`` broadcast),
    as :func:`sightkit.ops.generalized_box_iou` computes it (0 where a denominator is 0)."""
    overlap = (torch.minimum(a[2:4], b[2:4]) - torch.maximum(a[:2], b[:2])).clamp_(min=0)
    inter = overlap[0] * overlap[1]
    union = (a[4] + b[4]).sub_(inter)
    enclosing = (torch.maximum(a[2:4], b[2:4]) - torch.minimum(a[:2], b[:2])).clamp_(min=0)
    area_c = enclosing[0] * enclosing[1]
    return safe_divide(inter, union).sub_(safe_divide(area_c - union, area_c))


def _focal_class_cost(logits: Tensor, alpha: float, gamma: float) -> Tensor:
    """Deformable DETR's focal class cost of each logit for its own class.

    ``-log(sigmoid(x))`` is ``softplus(-x)`` and ``-log(1 - sigmoid(x))`` is ``softplus(x)``:
    exact and finite for any finite logit, where Deformable DETR's ``-log(p + 1e-8)`` caps both
    terms at about 18.4 (float32 rounds ``p`` to 0 or 1 beyond logits of about ±17).
    """
    prob = logits.sigmoid()
    positive = alpha * (1 - prob) ** gamma * F.softplus(-logits)
    negative = (1 - alpha) * prob**gamma * F.softplus(logits)
    return positive - negative


def _nonfinite_cost_error(image: int, logits: Tensor, pred_boxes: Tensor, boxes: Tensor) -> ValueError:
    inputs = {
        f"outputs['pred_logits'][{image}]": logits,
        f"outputs['pred_boxes'][{image}]": pred_boxes,
        f"targets[{image}]['boxes']": boxes,
    }
    culprits = [name for name, value in inputs.items() if not torch.isfinite(value).all()]
    cause = f"{' and '.join(culprits)} hold NaN or Inf" if culprits else "its inputs are finite but the cost overflowed"
    return ValueError(f"the matching cost of image {image} must be finite, but {cause}")
