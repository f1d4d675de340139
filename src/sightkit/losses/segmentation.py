"""Semantic segmentation losses: pixel-wise cross-entropy with an ignore index and the soft
multi-class Dice loss, and :class:`SegmentationLoss`, which returns both by name.

Masks are ``[B, H, W]`` int64 class indices in ``[0, C)``; pixels equal to ``ignore_index``
(255 by default, Pascal VOC's boundary value; also the padding value of batched masks) take
no part in either loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.losses.reduction import check_reduction, reduce_loss


def check_logits_masks(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Validate ``logits`` ``[B, C, H, W]`` and an integer ``target`` ``[B, H, W]`` of class
    indices in ``[0, C)`` or ``ignore_index``; returns the logits in float32 or wider."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim != 4:
        got = f"{logits.dtype} of shape {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point tensor of shape [B, C, H, W], got {got}")
    if not isinstance(target, Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        got = f"dtype {target.dtype}" if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(f"target must be an integer tensor of class indices [B, H, W], got {got}")
    batch, classes, height, width = logits.shape
    if target.shape != (batch, height, width):
        raise ValueError(
            f"target must have shape [B, H, W] = {(batch, height, width)} to match logits {tuple(logits.shape)}, "
            f"got {tuple(target.shape)}"
        )
    # One host sync per call; worth it, since an out-of-range class index would otherwise
    # surface as an opaque device-side assert in the cross-entropy kernel.
    valid = target[target != ignore_index]
    if valid.numel() and (valid.min() < 0 or valid.max() >= classes):
        raise ValueError(
            f"target values must be in [0, {classes}) or ignore_index={ignore_index}, "
            f"got values in [{int(valid.min())}, {int(valid.max())}]"
        )
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, target.long()


@export("losses.segmentation_cross_entropy")
def segmentation_cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> Tensor:
    """Pixel-wise softmax cross-entropy with an ignore index.

    Equals ``F.cross_entropy(logits, target, weight, ignore_index=ignore_index)`` (the mean
    divides by the summed class weights of the valid pixels), except that a batch with no
    valid pixel gives a zero that keeps the graph instead of NaN.

    Args:
        logits: ``[B, C, H, W]`` class scores.
        target: ``[B, H, W]`` int64 class indices in ``[0, C)`` or ``ignore_index``.
        weight: optional ``[C]`` per-class weights.
        ignore_index: the mask value of pixels without a label.
        reduction: ``"none"`` (``[B, H, W]``, 0 on ignored pixels), ``"mean"`` or ``"sum"``.
    """
    check_reduction(reduction)
    logits, target = check_logits_masks(logits, target, ignore_index)
    if weight is not None and (weight.ndim != 1 or weight.numel() != logits.shape[1]):
        raise ValueError(
            f"weight must be a [C] = [{logits.shape[1]}] tensor of class weights, got {tuple(weight.shape)}"
        )
    weight = None if weight is None else weight.to(logits)
    loss = F.cross_entropy(logits, target, weight, ignore_index=ignore_index, reduction="none")
    if reduction != "mean":
        return reduce_loss(loss, reduction)
    valid = target != ignore_index
    total = valid.sum() if weight is None else weight[target[valid]].sum()
    return loss.sum() / torch.where(total > 0, total, torch.ones_like(total)).to(loss)


@export("losses.dice_loss")
def dice_loss(
    logits: Tensor, target: Tensor, ignore_index: int = 255, smooth: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """Soft multi-class Dice loss on softmax probabilities (Milletari et al., "V-Net", 3DV 2016).

    For each class ``c``, over every valid pixel of the batch (a "batch Dice", which stays
    defined for images where the class is absent)::

        loss_c = 1 - (2 * sum(p_c * t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth)

    with ``p_c`` the softmax probability and ``t_c`` the one-hot target. A class absent from
    both prediction and target has loss 0; without any valid pixel every loss is 0.

    Args:
        logits: ``[B, C, H, W]`` class scores.
        target: ``[B, H, W]`` int64 class indices in ``[0, C)`` or ``ignore_index``.
        ignore_index: the mask value of pixels without a label.
        smooth: added to numerator and denominator (> 0 keeps empty classes finite).
        reduction: ``"none"`` (``[C]``, one loss per class), ``"mean"`` or ``"sum"`` over classes.
    """
    check_reduction(reduction)
    if smooth <= 0:
        raise ValueError(f"smooth must be > 0 (it keeps classes without pixels finite), got {smooth}")
    logits, target = check_logits_masks(logits, target, ignore_index)
    classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)  # [B, 1, H, W]
    probs = logits.softmax(dim=1) * valid
    one_hot = F.one_hot(target.masked_fill(~valid[:, 0], 0), classes).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    loss = 1 - (2 * intersection + smooth) / (denominator + smooth)
    return reduce_loss(loss, reduction)


@export("losses.SegmentationLoss")
class SegmentationLoss(nn.Module):
    """Cross-entropy with an ignore index plus an optional Dice term, as named losses.

    ``forward(logits [B, C, H, W], target [B, H, W])`` returns ``{"loss_ce": ..., "loss_dice":
    ...}`` (``loss_dice`` only when ``dice_weight > 0``); :attr:`weight_dict` holds the weights
    the trainer applies (DESIGN.md: losses are weighted in one place).

    Args:
        ignore_index: mask value without a label.
        dice_weight: weight of :func:`dice_loss` (0: cross-entropy only).
        class_weights: optional per-class weights of the cross-entropy.
        smooth: :func:`dice_loss`'s smoothing term.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        dice_weight: float = 0.0,
        class_weights: Sequence[float] | None = None,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
        self.ignore_index = ignore_index
        self.dice_weight = float(dice_weight)
        self.smooth = smooth
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.weight_dict = {"loss_ce": 1.0, **({"loss_dice": self.dice_weight} if self.dice_weight > 0 else {})}

    def forward(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        losses = {"loss_ce": segmentation_cross_entropy(logits, target, self.class_weights, self.ignore_index)}
        if self.dice_weight > 0:
            losses["loss_dice"] = dice_loss(logits, target, self.ignore_index, self.smooth)
        return losses
