"""Margin-based softmax losses for face recognition: SphereFace, ArcFace, CosFace and their combination.

The classifier of a face-recognition network compares the L2-normalised embedding with
L2-normalised class centres, so its logits are cosines ``cos θ_j``. The margin losses make
the true class harder to win during training by replacing its cosine with

    ψ(θ) = cos(m1 θ + m2) - m3

(SphereFace: ``m1``, Liu et al. CVPR 2017; ArcFace: ``m2``, Deng et al. CVPR 2019; CosFace:
``m3``, Wang et al. CVPR 2018; the combination is insightface's), and scale every logit by
``s`` before the softmax cross-entropy.

Two details that many copies get wrong are handled here:

- ``θ + m > π``. ``cos(m1 θ + m2)`` stops decreasing once ``t = m1 θ + m2`` passes ``π``: a
  sample that is further from its class would then get a *larger* target logit. As in
  SphereFace (eq. 6 there), ``ψ`` continues monotonically as ``(-1)^k cos(t) - 2k`` for ``t``
  in ``[kπ, (k + 1)π]``; the result is continuous, decreasing in ``θ`` and equals the plain
  formula wherever ``t <= π``.
- ``cos θ = ±1``. ``d arccos(c) / dc = -1 / sqrt(1 - c^2)`` is infinite there (and rounding
  can push a cosine slightly past ±1, where ``arccos`` is NaN). The angle is computed from
  the cosine clamped to [-1, 1]; within ``ANGLE_EPS`` of ±1 its value is exact but its
  gradient is taken as 0, a valid subgradient: ``θ`` as a function of the two vectors has a
  cusp at 0 and π, like ``|x|`` at 0. CosFace alone (``m1 = 1, m2 = 0``) needs no angle
  and keeps its exact gradient everywhere.

The margin is applied to the ``N`` target entries only, in float64; the ``[N, C]`` logits
are float32 (float64 for float64 input).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.losses.focal import check_real
from sightkit.losses.reduction import check_reduction, reduce_loss

#: Within this distance of ±1 the angle's gradient is 0 (its largest gradient is then about 707).
ANGLE_EPS = 1e-6


def check_margins(scale: float, m1: float, m2: float, m3: float) -> tuple[float, float, float, float]:
    """The four hyper-parameters as floats: ``scale > 0``, ``m1 >= 1``, ``m2`` in [0, π), ``m3 >= 0``."""
    scale = check_real(scale, "scale", minimum=0.0)
    if scale == 0:
        raise ValueError("scale must be > 0, got 0")
    return (
        scale,
        check_real(m1, "m1", minimum=1.0),
        check_real(m2, "m2", minimum=0.0, maximum=math.pi - 1e-6),
        check_real(m3, "m3", minimum=0.0),
    )


def check_cosine_labels(cosine: Tensor, labels: Tensor, allow_ignore: bool) -> None:
    """``cosine`` a floating ``[N, C]`` tensor, ``labels`` an integer ``[N]`` tensor on its device
    with values in ``[0, C)`` (or -1 where ``allow_ignore``)."""
    if not isinstance(cosine, Tensor) or not cosine.is_floating_point() or cosine.dim() != 2:
        got = f"shape {tuple(cosine.shape)}, dtype {cosine.dtype}" if isinstance(cosine, Tensor) else type(cosine)
        raise TypeError(f"cosine must be a floating-point tensor [N, C] of cosines, got {got}")
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype.is_complex:
        got = f"dtype {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"labels must be an integer tensor [N] of class indices, got {got}")
    if labels.dtype == torch.bool:
        raise TypeError("labels must be an integer tensor [N] of class indices, got dtype torch.bool")
    if labels.shape != cosine.shape[:1]:
        raise ValueError(
            f"labels must have shape [N] = [{cosine.shape[0]}] (one per row of cosine), got {tuple(labels.shape)}"
        )
    if labels.device != cosine.device:
        raise ValueError(f"labels must be on the device of cosine ({cosine.device}), got {labels.device}")
    if labels.numel():
        low, high = labels.min().item(), labels.max().item()
        lowest = -1 if allow_ignore else 0
        if low < lowest or high >= cosine.shape[1]:
            allowed = f"[0, {cosine.shape[1]})" + (" or -1" if allow_ignore else "")
            raise ValueError(f"labels must be class indices in {allowed}, got values in [{low}, {high}]")


def _angle(cosine: Tensor) -> Tensor:
    """``arccos`` of ``cosine`` clamped to [-1, 1], with zero gradient within ``ANGLE_EPS`` of ±1."""
    inner = cosine.abs() < 1 - ANGLE_EPS
    # The inner branch sees 0 where it is not used, so its gradient there is finite (0), not inf * 0 = NaN.
    smooth = torch.arccos(torch.where(inner, cosine, torch.zeros_like(cosine)))
    return torch.where(inner, smooth, torch.arccos(cosine.detach().clamp(-1.0, 1.0)))


def margin_target(cosine: Tensor, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> Tensor:
    """``ψ(θ)`` (module docstring) of target cosines of any shape, in their dtype."""
    if m1 == 1.0 and m2 == 0.0:
        return cosine - m3
    t = m1 * _angle(cosine) + m2
    k = torch.floor(t.detach() / math.pi).clamp(min=0)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * torch.cos(t) - 2.0 * k - m3


@export("losses.combined_margin_logits")
def combined_margin_logits(
    cosine: Tensor, labels: Tensor, scale: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0
) -> Tensor:
    """The scaled logits of the combined margin: ``s ψ(θ_y)`` at each row's label, ``s cos θ_j`` elsewhere.

    ``ψ(θ) = cos(m1 θ + m2) - m3`` with the monotonic continuation past ``m1 θ + m2 = π``
    (module docstring). ``m1 = 1, m2 = 0.5, m3 = 0`` is ArcFace; ``m1 = 1, m2 = 0, m3 = 0.4``
    is CosFace; ``m1 = 1.35`` (with ``m2 = m3 = 0``) is a SphereFace-style multiplicative margin.

    Args:
        cosine: ``[N, C]`` cosines between N normalised embeddings and C normalised class
            centres; values are clamped to [-1, 1] where the angle is needed.
        labels: ``[N]`` integer class indices in ``[0, C)``; -1 marks a row whose class is
            not among these C columns (Partial FC: the class lives on another rank), which
            is then only scaled.
        scale: ``s > 0``; insightface uses 64.
        m1, m2, m3: multiplicative angular (``>= 1``), additive angular (radians, in
            [0, π)) and additive cosine (``>= 0``) margins.

    Returns:
        ``[N, C]`` logits, float32 (float64 for float64 input).
    """
    scale, m1, m2, m3 = check_margins(scale, m1, m2, m3)
    check_cosine_labels(cosine, labels, allow_ignore=True)
    dtype = torch.float64 if cosine.dtype == torch.float64 else torch.float32
    logits = cosine.to(dtype) * scale
    rows = torch.nonzero(labels >= 0).squeeze(1)
    if rows.numel():
        columns = labels[rows].long()
        target = margin_target(cosine[rows, columns].double(), m1, m2, m3)
        logits = logits.index_put((rows, columns), (scale * target).to(dtype))
    return logits


@export("losses.combined_margin_loss")
def combined_margin_loss(
    cosine: Tensor,
    labels: Tensor,
    scale: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Softmax cross-entropy of :func:`combined_margin_logits`: ``-log softmax(s ψ(θ_y), s cos θ_j)``.

    Args:
        cosine: ``[N, C]`` cosines between normalised embeddings and class centres.
        labels: ``[N]`` integer class indices in ``[0, C)``.
        scale, m1, m2, m3: see :func:`combined_margin_logits`.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; an empty batch gives a zero that keeps the graph.

    Returns:
        ``[N]`` for ``"none"``, else a scalar; float32 (float64 for float64 input).
    """
    check_reduction(reduction)
    scale, m1, m2, m3 = check_margins(scale, m1, m2, m3)
    check_cosine_labels(cosine, labels, allow_ignore=False)
    logits = combined_margin_logits(cosine, labels, scale, m1, m2, m3)
    return reduce_loss(F.cross_entropy(logits, labels.long(), reduction="none"), reduction)


@export("losses.arcface_loss")
def arcface_loss(
    cosine: Tensor, labels: Tensor, scale: float = 64.0, margin: float = 0.5, reduction: str = "mean"
) -> Tensor:
    """ArcFace (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
    CVPR 2019): :func:`combined_margin_loss` with ``m2 = margin`` (radians). Shapes as there."""
    return combined_margin_loss(cosine, labels, scale, 1.0, margin, 0.0, reduction)


@export("losses.cosface_loss")
def cosface_loss(
    cosine: Tensor, labels: Tensor, scale: float = 64.0, margin: float = 0.4, reduction: str = "mean"
) -> Tensor:
    """CosFace (Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition",
    CVPR 2018): :func:`combined_margin_loss` with ``m3 = margin``. Shapes as there."""
    return combined_margin_loss(cosine, labels, scale, 1.0, 0.0, margin, reduction)


@export("losses.CombinedMarginLoss")
class CombinedMarginLoss(nn.Module):
    """See :func:`combined_margin_loss`; ``forward(cosine [N, C], labels [N])``.

    ``CombinedMarginLoss(64, m2=0.5)`` is ArcFace, ``CombinedMarginLoss(64, m2=0, m3=0.4)`` CosFace.
    """

    def __init__(
        self, scale: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.scale, self.m1, self.m2, self.m3 = check_margins(scale, m1, m2, m3)
        self.reduction = reduction

    def forward(self, cosine: Tensor, labels: Tensor) -> Tensor:
        return combined_margin_loss(cosine, labels, self.scale, self.m1, self.m2, self.m3, self.reduction)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, m1={self.m1}, m2={self.m2}, m3={self.m3}, reduction={self.reduction!r}"
