"""Contrastive denoising queries (DN-DETR, Li et al., CVPR 2022; DINO, Zhang et al., ICLR 2023).

During training the decoder also receives noised copies of the ground truth: each target's
label (flipped to a random class with probability ``label_noise_ratio / 2``) and box (each
edge moved by up to ``box_noise_scale`` times half the box's size). The model must reconstruct
the target from a *positive* copy (edges moved by less than ``box_noise_scale / 2`` of the
size, in relative terms), and must call a *negative* copy (moved by between that and twice
that) "no object". These queries need no matching (we know which target each one came from),
which steadies the early training of the matching queries: DINO converges in 12 epochs where
DETR needs 500.

The queries come in groups; one group holds a positive and a negative copy of every target of
an image, padded to the largest number of targets in the batch. The attention mask keeps the
task honest: the matching queries cannot see any denoising query (they would read the answers
off them), and a group cannot see another group (its copies of the same targets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sightkit._api import export
from sightkit.ops.boxes import box_convert


@export("models.DenoisingQueries")
@dataclass
class DenoisingQueries:
    """The denoising part of a training batch.

    Attributes:
        labels: ``[B, D]`` int64 noised labels; ``num_classes`` marks padding (no target).
        boxes: ``[B, D]`` x 4 noised boxes, ``cxcywh`` in [0, 1] (``0.5`` everywhere on padding).
        attn_mask: ``[D + Q, D + Q]`` bool for the decoder's self-attention over the ``D``
            denoising queries followed by the ``Q`` matching queries; True where query ``i``
            may not attend to query ``j``.
        positive_indices: per image, ``(query_idx, target_idx)`` int64 tensors: the positive
            copy ``query_idx[k]`` (in ``[0, D)``) reconstructs target ``target_idx[k]``.
        num_groups: groups ``G``; ``D = G * group_size``.
        group_size: queries per group, ``2 * max(1, largest T_b)``: positives first, then negatives.
    """

    labels: Tensor
    boxes: Tensor
    attn_mask: Tensor
    positive_indices: list[tuple[Tensor, Tensor]]
    num_groups: int
    group_size: int


@export("models.contrastive_denoising")
def contrastive_denoising(
    targets: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    num_queries: int,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> DenoisingQueries:
    """Build DINO's contrastive denoising queries for a batch (module docstring).

    ``G = max(1, num_denoising // max(1, largest T_b))`` groups, as RT-DETR counts them. A batch
    without any target still gets one group of padding queries, so that the model runs the same
    layers (and every parameter takes part in the loss) whatever the batch holds: under DDP a
    process whose batch has no targets must not skip what the others run (RT-DETR's hang).

    Args:
        targets: ``B`` dicts with ``"labels"`` ``[T_b]`` int64 in ``[0, C)`` and ``"boxes"``
            ``[T_b, 4]`` ``cxcywh`` in [0, 1].
        num_classes: ``C``.
        num_queries: ``Q``, the matching queries that follow the denoising ones.
        num_denoising: the budget of positive (and of negative) copies per image.
        label_noise_ratio: twice the probability that a copy's label is replaced by a random one.
        box_noise_scale: ``lambda``: positives move each edge by ``[0, lambda/2)`` of the box
            size, negatives by ``[lambda/2, lambda)``.
        generator: the random source, on the targets' device (default: torch's global one).
    """
    if num_classes < 1 or num_queries < 1 or num_denoising < 1:
        raise ValueError(
            f"num_classes, num_queries and num_denoising must be >= 1, got {num_classes}, {num_queries}, "
            f"{num_denoising}"
        )
    if not 0 <= label_noise_ratio <= 1 or box_noise_scale < 0:
        raise ValueError(
            f"need label_noise_ratio in [0, 1] and box_noise_scale >= 0, got {label_noise_ratio} and {box_noise_scale}"
        )
    batch = len(targets)
    if batch == 0:
        raise ValueError("targets must hold one dict per image, got an empty list")
    device = targets[0]["boxes"].device
    counts = [len(t["labels"]) for t in targets]
    half = max(1, max(counts))
    groups = max(1, num_denoising // half) if max(counts) > 0 else 1
    # The targets padded to `half` per image, then tiled: [B, G, 2 (positive, negative), half].
    labels = torch.full((batch, half), num_classes, dtype=torch.int64, device=device)
    boxes = torch.full((batch, half, 4), 0.5, device=device)
    valid = torch.zeros(batch, half, dtype=torch.bool, device=device)
    for b, (target, count) in enumerate(zip(targets, counts, strict=True)):
        labels[b, :count] = target["labels"]
        boxes[b, :count] = target["boxes"].to(boxes.dtype)
        valid[b, :count] = True
    shape = (batch, groups, 2, half)
    labels = labels[:, None, None].expand(shape).clone()
    boxes = boxes[:, None, None].expand(*shape, 4).clone()
    valid = valid[:, None, None].expand(shape)
    negative = torch.zeros(shape, dtype=torch.bool, device=device)
    negative[:, :, 1] = True

    def uniform(*size: int) -> Tensor:
        return torch.rand(size, generator=generator, device=device)

    if label_noise_ratio > 0:
        flip = uniform(*shape) < label_noise_ratio * 0.5
        random_labels = (uniform(*shape) * num_classes).long().clamp_(max=num_classes - 1)
        labels = torch.where(flip & valid, random_labels, labels)
    if box_noise_scale > 0:
        corners = box_convert(boxes, "cxcywh", "xyxy")
        half_sizes = boxes[..., 2:].repeat(1, 1, 1, 1, 2) * 0.5 * box_noise_scale
        magnitude = uniform(*shape, 4) + negative[..., None].float()
        sign = torch.where(uniform(*shape, 4) < 0.5, -1.0, 1.0)
        corners = (corners + sign * magnitude * half_sizes).clamp(0.0, 1.0)
        noised = box_convert(corners, "xyxy", "cxcywh")
        boxes = torch.where(valid[..., None], noised, boxes)
    group_size = 2 * half
    size = groups * group_size
    total = size + num_queries
    # The mask: matching queries do not see denoising ones; groups do not see each other.
    attn_mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    attn_mask[size:, :size] = True
    group = torch.arange(size, device=device) // group_size
    attn_mask[:size, :size] = group[:, None] != group[None, :]
    positive_indices = []
    offsets = torch.arange(groups, device=device)[:, None] * group_size
    for count in counts:
        index = torch.arange(count, device=device)
        positive_indices.append(((offsets + index).flatten(), index.repeat(groups)))
    return DenoisingQueries(
        labels=labels.reshape(batch, size),
        boxes=boxes.reshape(batch, size, 4),
        attn_mask=attn_mask,
        positive_indices=positive_indices,
        num_groups=groups,
        group_size=group_size,
    )
