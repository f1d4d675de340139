"""Residual log-likelihood estimation (RLE), the regression loss of Li et al., ICCV 2021.

A regression head predicts, per keypoint, a location ``mu`` and a scale ``sigma`` (one per
coordinate). The keypoint's density is a fixed, simple density ``Q`` (Laplace or Gaussian)
corrected by a learned one ``G`` (a :class:`~sightkit.nn.RealNVP` flow), both on the
normalised residual ``e = (mu - y) / sigma``; the loss is its negative log-likelihood::

    L = -log G(e) - sum_d log Q(e_d) + sum_d log sigma_d        (the paper's Eq. 8, per keypoint)

It is a log-likelihood, not a distance: it goes below zero as ``sigma`` shrinks around good
predictions, and it is not clamped. The flow learns how the residuals are really
distributed, so the head needs only to predict ``mu`` and ``sigma``; at test time the flow
is not used and the keypoint's score is ``1 - mean(sigma)``.

The official code and mmpose do not compute Eq. 8 literally, and differ from each other.
``form`` selects which one this function reproduces:

- ``"paper"``: Eq. 8 as above; ``Q`` normalised (Laplace ``exp(-|e|) / 2`` or Gaussian
  ``N(0, 1)``).
- ``"official"`` (Jeff-sjtu/res-loglikelihood-regression, ``RegressFlow`` + ``RLELoss``):
  the flow term ``log sigma - log G(e)`` is formed with the 2-D ``log G`` broadcast over the
  ``D`` coordinates, so ``log G`` is counted ``D`` times and ``log sigma`` twice (once more
  in the residual term); the residual term is ``log(sigma sqrt(2 pi)) + |mu - y| /
  (sqrt(2) sigma + 1e-9)``, a Laplace of scale ``sqrt(2) sigma`` with a Gaussian's
  normaliser. It is a Laplace only; ``q`` must be ``"laplace"``.
- ``"mmpose"`` (``mmpose.models.losses.RLELoss``): the same double counting, with the
  normalised ``Q`` of scale ``sigma``: ``log(2 sigma) + |e|`` (``q_dis="laplace"``) or
  ``log(sigma sqrt(2 pi)) + e^2 / 2`` (``"gaussian"``); and ``e`` divides by ``sigma + 1e-9``.

The forms have the same minimiser in ``mu`` but weigh the flow and ``sigma`` terms
differently. Their reductions also differ (official: sum / batch size; mmpose: mean over
every ``[B, K, D]`` entry, invisible ones included); here ``reduction="mean"`` is the
mean over the weighted keypoints, ``sum(w * L) / sum(w)``, whatever the form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sightkit._api import export
from sightkit.losses.reduction import check_reduction
from sightkit.nn.flows import RealNVP

Q_DENSITIES = ("laplace", "gaussian")
FORMS = ("paper", "official", "mmpose")
_LOG_2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _check_inputs(pred: Tensor, sigma: Tensor, target: Tensor, weight: Tensor | None) -> None:
    for name, value in (("pred", pred), ("sigma", sigma), ("target", target)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            got = f"dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{name} must be a floating-point tensor [..., K, D], got {got}")
    if pred.ndim < 2:
        raise ValueError(f"pred must have shape [..., K, D], got {tuple(pred.shape)}")
    for name, value in (("sigma", sigma), ("target", target)):
        if value.shape != pred.shape:
            raise ValueError(f"{name} must have the shape of pred {tuple(pred.shape)}, got {tuple(value.shape)}")
    if weight is not None:
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a tensor [..., K] or None, got {type(weight).__name__}")
        if weight.shape != pred.shape[:-1]:
            raise ValueError(
                f"weight must have shape [..., K] = {tuple(pred.shape[:-1])} (one per keypoint), "
                f"got {tuple(weight.shape)}"
            )


@export("losses.rle_loss")
def rle_loss(
    pred: Tensor,
    sigma: Tensor,
    target: Tensor,
    flow: RealNVP,
    weight: Tensor | None = None,
    *,
    q: str = "laplace",
    form: str = "paper",
    reduction: str = "mean",
) -> Tensor:
    """The RLE negative log-likelihood of ``target`` under the predicted ``(pred, sigma)``
    and the residual flow (see the module docstring for the formula and the ``form`` choices).

    Args:
        pred: predicted locations ``mu`` ``[..., K, D]`` (any unit; RLE uses coordinates
            normalised by the input size).
        sigma: predicted scales ``[..., K, D]``, all ``> 0`` (e.g. a sigmoid's output).
        target: true locations ``[..., K, D]``; a constant for autograd.
        flow: the residual density ``G``, a :class:`~sightkit.nn.RealNVP` of dimension ``D``
            (its parameters train with this loss).
        weight: ``[..., K]`` per-keypoint weights, e.g. ``visibility > 0``; a keypoint of
            weight 0 contributes nothing, not even a NaN, and the flow is not evaluated on
            it. ``None``: all 1.
        q: the base density ``Q``: ``"laplace"`` (the paper's choice for COCO) or ``"gaussian"``.
        form: ``"paper"``, ``"official"`` or ``"mmpose"``.
        reduction: ``"none"`` (``[..., K]``, weighted), ``"sum"`` or ``"mean"`` (over the
            weights: ``sum(w L) / sum(w)``; 0 when every weight is 0).

    Returns:
        The loss, float32 (float64 for float64 inputs), computed outside autocast. It may be
        negative.
    """
    check_reduction(reduction)
    if q not in Q_DENSITIES:
        raise ValueError(f"q must be one of {Q_DENSITIES}, got {q!r}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "official" and q != "laplace":
        raise ValueError(f"form='official' has only its Laplace residual term; use q='laplace', got q={q!r}")
    _check_inputs(pred, sigma, target, weight)
    if flow.dim != pred.shape[-1]:
        raise ValueError(f"flow is {flow.dim}-dimensional but the points are {pred.shape[-1]}-dimensional (pred)")
    dtype = torch.float64 if torch.float64 in (pred.dtype, sigma.dtype) else torch.float32
    with torch.autocast(pred.device.type, enabled=False):
        pred, sigma = pred.to(dtype), sigma.to(dtype)
        target = target.detach().to(dtype)
        residual = pred - target
        scaled = residual / (sigma + 1e-9) if form == "mmpose" else residual / sigma
        if weight is None:
            log_g = flow.log_prob(scaled).to(dtype)  # [..., K]
        else:
            # The flow, the costly part, runs only on the keypoints that count (on COCO a third
            # or more are unlabelled); the others get 0, which the weighting discards anyway.
            counted = weight.detach() > 0
            log_g = scaled.new_zeros(scaled.shape[:-1]).index_put((counted,), flow.log_prob(scaled[counted]).to(dtype))
        log_sigma = torch.log(sigma)
        dims = pred.shape[-1]
        if form == "official":
            residual_term = _LOG_SQRT_2PI + log_sigma + residual.abs() / (math.sqrt(2) * sigma + 1e-9)
        elif q == "laplace":
            residual_term = _LOG_2 + scaled.abs()
        else:
            residual_term = _LOG_SQRT_2PI + 0.5 * scaled.square()
        if form == "paper":
            loss = log_sigma.sum(-1) - log_g + residual_term.sum(-1)
        elif form == "official":
            loss = log_sigma.sum(-1) - dims * log_g + residual_term.sum(-1)
        else:
            loss = 2 * log_sigma.sum(-1) - dims * log_g + residual_term.sum(-1)
        return _reduce(loss, weight, reduction)


def _reduce(loss: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    if weight is not None:
        weight = weight.detach().to(loss.dtype)
        # where, not a product: a keypoint of weight 0 must not turn the sum into NaN when its
        # loss is not finite (e.g. a far-off unlabelled target).
        loss = torch.where(weight > 0, loss, 0.0) * weight
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    count = weight.sum() if weight is not None else loss.new_tensor(float(loss.numel()))
    return torch.where(count > 0, total / count.clamp(min=torch.finfo(loss.dtype).tiny), total)


@export("losses.RLELoss")
class RLELoss(nn.Module):
    """See :func:`rle_loss`; holds ``q``, ``form`` and ``reduction``. The flow belongs to the
    model (it is trained with it and saved in its weights) and is passed at each call."""

    def __init__(self, q: str = "laplace", form: str = "paper", reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        if q not in Q_DENSITIES:
            raise ValueError(f"q must be one of {Q_DENSITIES}, got {q!r}")
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.q, self.form, self.reduction = q, form, reduction

    def forward(
        self, pred: Tensor, sigma: Tensor, target: Tensor, flow: RealNVP, weight: Tensor | None = None
    ) -> Tensor:
        return rle_loss(pred, sigma, target, flow, weight, q=self.q, form=self.form, reduction=self.reduction)
