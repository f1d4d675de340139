"""DETR's set prediction loss (Carion et al., "End-to-End Object Detection with Transformers",
ECCV 2020): match predictions to targets one-to-one, then score classes and matched boxes.

For one decoder layer, with ``N`` the number of target boxes (averaged over processes):

- ``loss_ce``: cross-entropy of every query against its matched label, or "no object" for
  unmatched queries, weighted by ``eos_coef`` for "no object" and 1 otherwise, divided by
  the sum of the weights (a weighted mean, as ``F.cross_entropy(weight=...)`` and DETR do);
- ``loss_bbox``: L1 distance of the matched ``cxcywh`` boxes, summed and divided by ``N``;
- ``loss_giou``: ``1 - GIoU`` of the matched boxes (as ``xyxy``), summed and divided by ``N``.

:class:`SetCriterion` returns these unweighted, with the suffix ``_i`` for the auxiliary
output of decoder layer ``i``, plus the metric ``class_error``; its ``weight_dict`` holds
the weights (1, 5, 2 in DETR) that the training engine applies, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.losses.iou import generalized_box_iou_loss
from sightkit.ops.boxes import box_convert
from sightkit.ops.matching import HungarianMatcher

Targets = Sequence[Mapping[str, Tensor]]
Indices = Sequence[tuple[Tensor, Tensor]]


def _at_least_float32(tensor: Tensor) -> Tensor:
    """Half precision is computed in float32; float64 stays float64 (e.g. for gradcheck)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _matched_queries(indices: Indices) -> tuple[Tensor, Tensor]:
    """Flatten per-image ``(pred_idx, tgt_idx)`` pairs into ``(image_idx, pred_idx)`` for indexing ``[B, Q, ...]``."""
    image_idx = torch.cat([torch.full_like(pred, b) for b, (pred, _) in enumerate(indices)])
    pred_idx = torch.cat([pred for pred, _ in indices])
    return image_idx, pred_idx


@export("losses.set_prediction_loss")
def set_prediction_loss(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    targets: Targets,
    indices: Indices,
    num_boxes: float,
    eos_coef: float = 0.1,
) -> dict[str, Tensor]:
    """The three DETR losses of one decoder layer for a given matching (module docstring).

    Args:
        pred_logits: ``[B, Q, C + 1]`` class logits, the last one "no object".
        pred_boxes: ``[B, Q, 4]`` ``cxcywh`` in [0, 1].
        targets: ``B`` dicts with ``"labels"`` ``[T_b]`` int64 in ``[0, C)`` and ``"boxes"``
            ``[T_b, 4]`` ``cxcywh`` in [0, 1].
        indices: per image, ``(pred_idx, tgt_idx)`` int64 tensors of equal length, e.g. from
            :class:`sightkit.ops.HungarianMatcher`.
        num_boxes: the normaliser ``N`` of the box losses (> 0).
        eos_coef: weight of the "no object" class in the cross-entropy.

    Returns:
        ``{"loss_ce", "loss_bbox", "loss_giou"}``: unweighted scalars, float32 (float64 for
        float64 predictions).
    """
    if num_boxes <= 0:
        raise ValueError(f"num_boxes must be > 0, got {num_boxes}")
    if len(indices) != len(targets) or len(targets) != pred_logits.shape[0]:
        raise ValueError(
            f"need one target dict and one index pair per image: B = {pred_logits.shape[0]}, "
            f"got {len(targets)} targets and {len(indices)} index pairs"
        )
    logits = _at_least_float32(pred_logits)
    num_classes = logits.shape[-1] - 1
    image_idx, pred_idx = _matched_queries(indices)
    target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
    target_classes[image_idx, pred_idx] = torch.cat(
        [t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)]
    )
    class_weight = torch.ones(num_classes + 1, dtype=logits.dtype, device=logits.device)
    class_weight[-1] = eos_coef
    loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, weight=class_weight)

    src_boxes = _at_least_float32(pred_boxes[image_idx, pred_idx])
    tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)]).to(src_boxes)
    loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
    loss_giou = (
        generalized_box_iou_loss(
            box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"), reduction="sum"
        )
        / num_boxes
    )
    return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}


def class_error(pred_logits: Tensor, targets: Targets, indices: Indices) -> Tensor:
    """Percentage of matched queries whose most likely class is not their target's label
    (0 when nothing is matched). A metric: no gradient."""
    image_idx, pred_idx = _matched_queries(indices)
    if pred_idx.numel() == 0:
        return pred_logits.new_zeros((), dtype=torch.float32)
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)])
    predicted = pred_logits.detach()[image_idx, pred_idx].argmax(-1)
    return 100.0 * (predicted != labels).float().mean()


def global_num_boxes(targets: Targets, device: torch.device) -> float:
    """The number of target boxes per process, averaged over all processes when
    ``torch.distributed`` is initialised, at least 1.

    Every process divides its box losses by the same number, so that the gradient
    all-reduce (a mean over processes) gives the loss of the global batch.
    """
    num_boxes = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_boxes)
        num_boxes = num_boxes / dist.get_world_size()
    return max(num_boxes.item(), 1.0)


@export("losses.SetCriterion")
class SetCriterion(nn.Module):
    """DETR's criterion: Hungarian matching, then :func:`set_prediction_loss` for the final
    output and, with the matching redone, for each auxiliary decoder output.

    Args:
        num_classes: object classes ``C`` (the logits have ``C + 1``).
        matcher: the matcher; default ``HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)``.
        eos_coef: weight of the "no object" class in the cross-entropy.
        aux_layers: auxiliary outputs the model returns (decoder layers - 1; 0 for none).
        weight_ce: weight of ``loss_ce`` (and ``loss_ce_i``) in :attr:`weight_dict`.
        weight_bbox: weight of ``loss_bbox``.
        weight_giou: weight of ``loss_giou``.

    Attributes:
        weight_dict: ``{loss name: weight}`` for every loss :meth:`forward` returns; the
            engine sums ``weight * loss`` over it. ``class_error`` is a metric, not in it.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module | None = None,
        eos_coef: float = 0.1,
        aux_layers: int = 0,
        weight_ce: float = 1.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0 <= eos_coef <= 1:
            raise ValueError(f"eos_coef must lie in [0, 1], got {eos_coef}")
        if aux_layers < 0:
            raise ValueError(f"aux_layers must be >= 0, got {aux_layers}")
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher(1.0, 5.0, 2.0)
        self.eos_coef = eos_coef
        self.aux_layers = aux_layers
        weights = {"loss_ce": weight_ce, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        self.weight_dict: dict[str, float] = dict(weights)
        for i in range(aux_layers):
            self.weight_dict.update({f"{name}_{i}": weight for name, weight in weights.items()})

    def forward(self, outputs: Mapping[str, Any], targets: Targets) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            outputs: the model's dict: ``"pred_logits"`` ``[B, Q, C + 1]``, ``"pred_boxes"``
                ``[B, Q, 4]`` ``cxcywh`` in [0, 1], and ``"aux_outputs"`` (a list of
                ``aux_layers`` dicts with the same keys) when ``aux_layers > 0``.
            targets: ``B`` dicts with ``"labels"`` ``[T_b]`` int64 in ``[0, C)`` and
                ``"boxes"`` ``[T_b, 4]`` ``cxcywh`` normalised by the image size.

        Returns:
            ``loss_ce``, ``loss_bbox``, ``loss_giou``, the same with suffix ``_i`` for
            auxiliary output ``i``, and ``class_error`` (percent, final output).
        """
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"outputs['pred_logits'] must have C + 1 = {self.num_classes + 1} classes (num_classes plus "
                f"'no object'), got {logits.shape[-1]}"
            )
        aux_outputs = outputs.get("aux_outputs", [])
        if len(aux_outputs) != self.aux_layers:
            raise ValueError(
                f"outputs['aux_outputs'] must hold aux_layers = {self.aux_layers} dicts, got {len(aux_outputs)}; "
                "build the criterion with aux_layers = (decoder layers - 1) for a model with aux_loss, else 0"
            )
        num_boxes = global_num_boxes(targets, logits.device)
        indices = self.matcher(outputs, targets)
        losses = set_prediction_loss(logits, outputs["pred_boxes"], targets, indices, num_boxes, self.eos_coef)
        losses["class_error"] = class_error(logits, targets, indices)
        for i, aux in enumerate(aux_outputs):
            aux_indices = self.matcher(aux, targets)
            aux_losses = set_prediction_loss(
                aux["pred_logits"], aux["pred_boxes"], targets, aux_indices, num_boxes, self.eos_coef
            )
            losses.update({f"{name}_{i}": value for name, value in aux_losses.items()})
        return losses
