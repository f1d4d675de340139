"""Varifocal loss (Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021).

The classification target of a positive is its IoU-aware classification score ``q`` (the IoU
of the predicted box with its ground truth) instead of 1, and the loss treats positives and
negatives asymmetrically: positives keep their full binary cross-entropy with soft target
``q``, weighted by ``q`` so that high-quality positives count more; negatives (``q = 0``) are
down-weighted by ``α p^γ`` as in the focal loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.losses.focal import check_logits_targets, check_real
from sightkit.losses.reduction import check_reduction, reduce_loss


@export("losses.varifocal_loss")
def varifocal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    reduction: str = "none",
) -> Tensor:
    """Varifocal loss (Zhang et al., CVPR 2021, eq. 2), with ``p = sigmoid(inputs)``::

        VFL(p, q) = -q (q log p + (1 - q) log(1 - p))    if q > 0
                  = -α p^γ log(1 - p)                    if q = 0

    Args:
        inputs: logits of any shape ``[...]``; half precision is computed in float32.
        targets: ``[...]`` IoU-aware targets ``q`` in [0, 1]: the IoU with the matched ground
            truth at the true class of a positive, 0 elsewhere. Detached: ``q`` is a constant.
        alpha: weight ``α >= 0`` of the negatives.
        gamma: exponent ``γ >= 0`` of ``p`` in the weight of the negatives.
        iou_weighted: weight positives by ``q`` (the paper); if False, by 1.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        ``[...]`` loss for ``"none"``, else a scalar; float32 (float64 for float64 inputs).
    """
    check_reduction(reduction)
    alpha = check_real(alpha, "alpha", minimum=0.0)
    gamma = check_real(gamma, "gamma", minimum=0.0)
    if not isinstance(iou_weighted, bool):
        raise TypeError(f"iou_weighted must be a bool, got {type(iou_weighted).__name__}")
    inputs, targets = check_logits_targets(inputs, targets)
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    # p^γ = exp(γ logsigmoid(x)): finite value and gradient for any logit and any γ >= 0.
    negative_weight = alpha * torch.exp(gamma * F.logsigmoid(inputs))
    positive_weight = targets if iou_weighted else torch.ones_like(targets)
    return reduce_loss(loss * torch.where(targets > 0, positive_weight, negative_weight), reduction)


@export("losses.VarifocalLoss")
class VarifocalLoss(nn.Module):
    """See :func:`varifocal_loss`; the result is multiplied by ``loss_weight``."""

    def __init__(
        self,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        reduction: str = "none",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.alpha = check_real(alpha, "alpha", minimum=0.0)
        self.gamma = check_real(gamma, "gamma", minimum=0.0)
        if not isinstance(iou_weighted, bool):
            raise TypeError(f"iou_weighted must be a bool, got {type(iou_weighted).__name__}")
        self.iou_weighted = iou_weighted
        self.reduction = reduction
        self.loss_weight = check_real(loss_weight, "loss_weight")

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        loss = varifocal_loss(inputs, targets, self.alpha, self.gamma, self.iou_weighted, self.reduction)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, "
            f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"
        )
