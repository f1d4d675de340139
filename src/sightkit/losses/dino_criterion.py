"""The set criterion of fast-converging DETRs with sigmoid classification: IoU-aware varifocal
classification (RT-DETR, Zhao et al., CVPR 2024), focal matching cost (Deformable DETR, Zhu
et al., ICLR 2021), and the losses of DINO's denoising queries and encoder proposals (Zhang et
al., ICLR 2023).

For one set of predictions and a matching, with ``N`` the number of target boxes (averaged
over processes):

- ``loss_vfl``: :func:`~sightkit.losses.varifocal_loss` over every query and class; the target
  of a matched query at its target's class is the IoU of its predicted box with the target
  box (detached: a constant), 0 everywhere else; summed and divided by ``N``;
- ``loss_bbox``: L1 distance of the matched ``cxcywh`` boxes, summed and divided by ``N``;
- ``loss_giou``: ``1 - GIoU`` of the matched boxes, summed and divided by ``N``.

:class:`DINOCriterion` computes them for the final decoder layer, for every earlier layer
(suffix ``_i``), for the selected encoder proposals (``_enc``), and for the denoising queries
of every layer (``_dn_i``), whose matching is known (each positive copy to its own target) and
whose normaliser is ``N`` times the number of denoising groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.losses.iou import box_iou_loss, generalized_box_iou_loss
from sightkit.losses.set_criterion import Indices, Targets, _at_least_float32, _matched_queries, global_num_boxes
from sightkit.losses.varifocal import varifocal_loss
from sightkit.ops.boxes import box_convert
from sightkit.ops.matching import HungarianMatcher

LOSSES = ("loss_vfl", "loss_bbox", "loss_giou")


@export("losses.varifocal_set_loss")
def varifocal_set_loss(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    targets: Targets,
    indices: Indices,
    num_boxes: float,
    alpha: float = 0.75,
    gamma: float = 2.0,
) -> dict[str, Tensor]:
    """The three losses of one set of predictions for a given matching (module docstring).

    Args:
        pred_logits: ``[B, Q, C]`` class logits (sigmoid, no "no object" class).
        pred_boxes: ``[B, Q, 4]`` ``cxcywh`` in [0, 1].
        targets: ``B`` dicts with ``"labels"`` ``[T_b]`` int64 in ``[0, C)`` and ``"boxes"``
            ``[T_b, 4]`` ``cxcywh`` in [0, 1].
        indices: per image, ``(pred_idx, tgt_idx)`` int64 tensors of equal length.
        num_boxes: the normaliser ``N`` (> 0).
        alpha: varifocal weight of the negatives.
        gamma: varifocal exponent of the negatives' weight.

    Returns:
        ``{"loss_vfl", "loss_bbox", "loss_giou"}``: unweighted scalars, float32 (float64 for
        float64 predictions). Without any match the box losses are zeros that keep the graph.
    """
    if num_boxes <= 0:
        raise ValueError(f"num_boxes must be > 0, got {num_boxes}")
    if len(indices) != len(targets) or len(targets) != pred_logits.shape[0]:
        raise ValueError(
            f"need one target dict and one index pair per image: B = {pred_logits.shape[0]}, "
            f"got {len(targets)} targets and {len(indices)} index pairs"
        )
    logits = _at_least_float32(pred_logits)
    image_idx, pred_idx = _matched_queries(indices)
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)]).to(logits.device)
    src_boxes = _at_least_float32(pred_boxes[image_idx, pred_idx])
    tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)]).to(src_boxes)
    src_xyxy, tgt_xyxy = box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
    # The IoU-aware target: how well the matched box fits, a constant for autograd.
    iou = (1 - box_iou_loss(src_xyxy.detach(), tgt_xyxy)).clamp(0.0, 1.0)
    scores = torch.zeros_like(logits, requires_grad=False)
    scores[image_idx, pred_idx, labels] = iou.to(scores.dtype)
    loss_vfl = varifocal_loss(logits, scores, alpha, gamma, reduction="sum") / num_boxes
    loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
    loss_giou = generalized_box_iou_loss(src_xyxy, tgt_xyxy, reduction="sum") / num_boxes
    return {"loss_vfl": loss_vfl, "loss_bbox": loss_bbox, "loss_giou": loss_giou}


@export("losses.DINOCriterion")
class DINOCriterion(nn.Module):
    """DINO's criterion with IoU-aware classification (module docstring).

    Args:
        num_classes: object classes ``C`` (the logits have ``C``).
        matcher: default ``HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2, class_cost="focal")``,
            DINO's and RT-DETR's costs.
        aux_layers: auxiliary decoder outputs the model returns (decoder layers - 1).
        alpha: varifocal weight of the negatives (RT-DETR: 0.75).
        gamma: varifocal exponent (2).
        weight_vfl: weight of every ``loss_vfl*`` in :attr:`weight_dict` (RT-DETR: 1).
        weight_bbox: weight of every ``loss_bbox*`` (5).
        weight_giou: weight of every ``loss_giou*`` (2).

    Attributes:
        weight_dict: ``{loss name: weight}`` for every loss :meth:`forward` returns; the engine
            sums ``weight * loss`` over it.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module | None = None,
        aux_layers: int = 0,
        alpha: float = 0.75,
        gamma: float = 2.0,
        weight_vfl: float = 1.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if aux_layers < 0:
            raise ValueError(f"aux_layers must be >= 0, got {aux_layers}")
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher(2.0, 5.0, 2.0, class_cost="focal")
        self.aux_layers = aux_layers
        self.alpha = alpha
        self.gamma = gamma
        weights = dict(zip(LOSSES, (weight_vfl, weight_bbox, weight_giou), strict=True))
        suffixes = ["", *(f"_{i}" for i in range(aux_layers)), "_enc", *(f"_dn_{i}" for i in range(aux_layers + 1))]
        self.weight_dict: dict[str, float] = {
            f"{name}{suffix}": weight for suffix in suffixes for name, weight in weights.items()
        }

    def forward(self, outputs: Mapping[str, Any], targets: Targets) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            outputs: the model's dict (:class:`~sightkit.models.DINO`): ``"pred_logits"``
                ``[B, Q, C]``, ``"pred_boxes"`` ``[B, Q, 4]``, ``"aux_outputs"`` (``aux_layers``
                dicts), ``"enc_outputs"`` (a dict), and in training ``"dn_outputs"`` (``aux_layers
                + 1`` dicts) with ``"dn_meta"`` (its ``positive_indices`` and ``num_groups``).
            targets: ``B`` dicts with ``"labels"`` ``[T_b]`` and ``"boxes"`` ``[T_b, 4]`` ``cxcywh``.

        Returns:
            Every name of :attr:`weight_dict`. Without denoising outputs (evaluation) the ``_dn``
            losses are zeros, so that the names do not depend on the mode.
        """
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"outputs['pred_logits'] must have C = {self.num_classes} classes (sigmoid, no 'no object' "
                f"class), got {logits.shape[-1]}"
            )
        aux_outputs = outputs.get("aux_outputs", [])
        if len(aux_outputs) != self.aux_layers:
            raise ValueError(
                f"outputs['aux_outputs'] must hold aux_layers = {self.aux_layers} dicts, got {len(aux_outputs)}; "
                "build the criterion with aux_layers = decoder layers - 1 (or with model.build_criterion())"
            )
        num_boxes = global_num_boxes(targets, logits.device)
        losses: dict[str, Tensor] = {}
        matched = [("", outputs), *((f"_{i}", aux) for i, aux in enumerate(aux_outputs))]
        if "enc_outputs" in outputs:
            matched.append(("_enc", outputs["enc_outputs"]))
        for suffix, prediction in matched:
            indices = self.matcher(prediction, targets)
            layer_losses = varifocal_set_loss(
                prediction["pred_logits"], prediction["pred_boxes"], targets, indices, num_boxes, self.alpha, self.gamma
            )
            losses.update({f"{name}{suffix}": value for name, value in layer_losses.items()})
        dn_outputs = outputs.get("dn_outputs")
        if dn_outputs is not None:
            meta = outputs["dn_meta"]
            if len(dn_outputs) != self.aux_layers + 1:
                raise ValueError(
                    f"outputs['dn_outputs'] must hold aux_layers + 1 = {self.aux_layers + 1} dicts, "
                    f"got {len(dn_outputs)}"
                )
            for i, prediction in enumerate(dn_outputs):
                layer_losses = varifocal_set_loss(
                    prediction["pred_logits"],
                    prediction["pred_boxes"],
                    targets,
                    meta.positive_indices,
                    num_boxes * meta.num_groups,
                    self.alpha,
                    self.gamma,
                )
                losses.update({f"{name}_dn_{i}": value for name, value in layer_losses.items()})
        zero = logits.new_zeros((), dtype=torch.promote_types(logits.dtype, torch.float32))
        return {name: losses.get(name, zero) for name in self.weight_dict}
