"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

Values equal ``torchvision.ops.sigmoid_focal_loss``. The modulating factor ``(1 - p_t)^γ``
is computed in log space, ``exp(γ log(1 - p_t))`` with ``log(1 - p_t)`` from ``logsigmoid``,
because the direct form rounds ``1 - p_t`` to 0 for confident logits and then gives NaN
gradients for ``γ < 1`` (``d/dx x^γ`` is infinite at 0); here logits of ±100 keep finite
values and gradients for every ``γ >= 0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.losses.reduction import check_reduction, reduce_loss


def check_real(value: float, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a float; ``TypeError`` unless it is a real number, ``ValueError`` outside [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"[{minimum if minimum is not None else '-inf'}, {maximum if maximum is not None else 'inf'}]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return float(value)


def check_logits_targets(inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Validate logits and targets of the same shape with targets in [0, 1].

    Returns both in float32 (float64 if either is float64), the targets detached: they are
    constants for autograd.
    """
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
        got = f"dtype {inputs.dtype}" if isinstance(inputs, Tensor) else type(inputs).__name__
        raise TypeError(f"inputs must be a floating-point tensor of logits, got {got}")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor with the shape of inputs, got {type(targets).__name__}")
    if targets.shape != inputs.shape:
        raise ValueError(f"targets must have the shape of inputs {tuple(inputs.shape)}, got {tuple(targets.shape)}")
    if targets.device != inputs.device:
        raise ValueError(f"targets must be on the device of inputs ({inputs.device}), got {targets.device}")
    wide = torch.float64 in (inputs.dtype, targets.dtype)
    dtype = torch.float64 if wide else torch.float32
    targets = targets.detach().to(dtype)
    if targets.numel() > 0 and not bool(((targets >= 0) & (targets <= 1)).all()):
        finite = targets[torch.isfinite(targets)]
        span = f"[{finite.min().item():g}, {finite.max().item():g}]" if finite.numel() else "no finite values"
        raise ValueError(f"targets must lie in [0, 1] (NaN is not allowed), got values in {span}")
    return inputs.to(dtype), targets


def _log_one_minus_pt(inputs: Tensor, targets: Tensor) -> Tensor:
    """``log(1 - p_t)`` with ``1 - p_t = sigmoid(x)(1 - t) + sigmoid(-x) t``, finite for any logit.

    Hard targets take ``logsigmoid(±x)``; soft ones the ``logaddexp`` of both terms, evaluated on
    a stand-in target of 1/2 elsewhere so that no branch ever sees ``log(0)``: an infinite value
    in the branch that ``where`` discards would still turn its gradients into NaN.
    """
    log_p, log_one_minus_p = F.logsigmoid(inputs), F.logsigmoid(-inputs)
    soft = (targets > 0) & (targets < 1)
    t = torch.where(soft, targets, 0.5)
    mixed = torch.logaddexp(log_p + torch.log1p(-t), log_one_minus_p + torch.log(t))
    return torch.where(soft, mixed, torch.where(targets == 0, log_p, log_one_minus_p))


@export("losses.sigmoid_focal_loss")
def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Focal loss on sigmoid outputs (Lin et al., ICCV 2017, the RetinaNet loss):
    ``-α_t (1 - p_t)^γ log(p_t)``, binary cross-entropy scaled down on easy examples.

    With ``p = sigmoid(inputs)`` and target ``t``: ``p_t = p t + (1 - p)(1 - t)`` and
    ``α_t = α t + (1 - α)(1 - t)``; the cross-entropy term is ``binary_cross_entropy_with_logits``,
    so soft targets are allowed.

    Args:
        inputs: logits of any shape ``[...]``; half precision is computed in float32.
        targets: ``[...]`` in [0, 1] (1 positive, 0 negative); constants for autograd.
        alpha: weight of the positives in [0, 1]; any negative value turns the weighting off.
        gamma: focusing exponent, ``>= 0``; 0 gives (α-weighted) binary cross-entropy.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        ``[...]`` loss for ``"none"``, else a scalar; float32 (float64 for float64 inputs).
    """
    check_reduction(reduction)
    alpha = check_real(alpha, "alpha", maximum=1.0)
    gamma = check_real(gamma, "gamma", minimum=0.0)
    inputs, targets = check_logits_targets(inputs, targets)
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    if gamma != 0:
        loss = loss * torch.exp(gamma * _log_one_minus_pt(inputs, targets))
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return reduce_loss(loss, reduction)


@export("losses.FocalLoss")
class FocalLoss(nn.Module):
    """See :func:`sigmoid_focal_loss`; the result is multiplied by ``loss_weight``."""

    def __init__(
        self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none", loss_weight: float = 1.0
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.alpha = check_real(alpha, "alpha", maximum=1.0)
        self.gamma = check_real(gamma, "gamma", minimum=0.0)
        self.reduction = reduction
        self.loss_weight = check_real(loss_weight, "loss_weight")

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return self.loss_weight * sigmoid_focal_loss(inputs, targets, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"
