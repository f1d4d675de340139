"""Collation of detection samples: pad images of different sizes into one batch tensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import get_worker_info
from torchvision import tv_tensors

from sightkit._api import export


@export("data.DetectionBatch")
class DetectionBatch(NamedTuple):
    """A padded batch.

    Attributes:
        images: ``[B, C, H, W]``, each image at the top-left, zeros elsewhere; ``H, W`` the
            largest height and width in the batch, rounded up to ``size_divisible``.
        padding_mask: bool ``[B, H, W]``, True on padding (DETR's mask).
        targets: one target dict per image, as the dataset and transforms gave them.
        image_sizes: int64 ``[B, 2]``, ``(h, w)`` of each image before padding.
        skipped: samples left out because the dataset returned ``None`` for them (bad
            images with ``on_error="skip"``).
    """

    images: Tensor
    padding_mask: Tensor
    targets: list[dict[str, Any]]
    image_sizes: Tensor
    skipped: int

    def __reduce__(self) -> tuple[Any, ...]:
        # A DataLoader worker sends every tensor through its own shared-memory segment and file
        # descriptor, which costs more than the data for the handful of small tensors in each target.
        # Pickled, the targets' tensors therefore travel as one buffer per dtype and are rebuilt as views.
        buffers, layout = _pack_targets(self.targets)
        return _unpack_batch, (self.images, self.padding_mask, buffers, layout, self.image_sizes, self.skipped)


def _tensor_kind(value: Tensor) -> tuple[Any, ...]:
    if isinstance(value, tv_tensors.BoundingBoxes):
        return ("boxes", value.format.name, tuple(value.canvas_size), value.clamping_mode)
    if isinstance(value, tv_tensors.KeyPoints):
        return ("keypoints", tuple(value.canvas_size))
    if isinstance(value, tv_tensors.Mask):
        return ("mask",)
    return ("tensor",)


def _rewrap(view: Tensor, kind: tuple[Any, ...]) -> Tensor:
    if kind[0] == "boxes":
        return tv_tensors.BoundingBoxes(view, format=kind[1], canvas_size=kind[2], clamping_mode=kind[3])
    if kind[0] == "keypoints":
        return tv_tensors.KeyPoints(view, canvas_size=kind[1])
    if kind[0] == "mask":
        return tv_tensors.Mask(view)
    return view


def _pack_targets(targets: list[dict[str, Any]]) -> tuple[dict[torch.dtype, Tensor], list[list[tuple[Any, ...]]]]:
    """Every tensor of every target flattened into one buffer per dtype, and how to rebuild them."""
    parts: dict[torch.dtype, list[Tensor]] = {}
    sizes: dict[torch.dtype, int] = {}
    layout = []
    for target in targets:
        entries = []
        for key, value in target.items():
            if isinstance(value, Tensor) and not value.requires_grad:
                plain = value.as_subclass(Tensor)
                offset = sizes.get(plain.dtype, 0)
                parts.setdefault(plain.dtype, []).append(plain.reshape(-1))
                sizes[plain.dtype] = offset + plain.numel()
                entries.append((key, _tensor_kind(value), plain.dtype, tuple(plain.shape), offset))
            else:
                entries.append((key, None, value))
        layout.append(entries)
    return {dtype: torch.cat(tensors) for dtype, tensors in parts.items()}, layout


def _unpack_batch(
    images: Tensor,
    padding_mask: Tensor,
    buffers: dict[torch.dtype, Tensor],
    layout: list[list[tuple[Any, ...]]],
    image_sizes: Tensor,
    skipped: int,
) -> DetectionBatch:
    targets = []
    for entries in layout:
        target = {}
        for key, kind, *rest in entries:
            if kind is None:
                target[key] = rest[0]
            else:
                dtype, shape, offset = rest
                numel = 1
                for n in shape:
                    numel *= n
                target[key] = _rewrap(buffers[dtype][offset : offset + numel].view(shape), kind)
        targets.append(target)
    return DetectionBatch(images, padding_mask, targets, image_sizes, skipped)


@export("data.collate_detection")
def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]] | None], size_divisible: int = 1) -> DetectionBatch:
    """Pad ``(image [C, H, W], target)`` samples into a :class:`DetectionBatch`.

    ``None`` samples (skipped bad images) are dropped and counted. For a ``DataLoader`` with
    padding to a multiple of 32: ``collate_fn=functools.partial(collate_detection,
    size_divisible=32)`` (picklable, so it works with worker processes).
    """
    if size_divisible < 1:
        raise ValueError(f"size_divisible must be >= 1, got {size_divisible}")
    samples = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(samples)
    if not samples:
        return DetectionBatch(
            torch.zeros(0, 3, 0, 0),
            torch.zeros(0, 0, 0, dtype=torch.bool),
            [],
            torch.zeros(0, 2, dtype=torch.int64),
            skipped,
        )
    images = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, tuple | list) or len(sample) != 2:
            raise TypeError(f"batch[{i}] must be an (image, target) pair, got {type(sample).__name__}")
        image = sample[0]
        if not isinstance(image, Tensor) or image.ndim != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"batch[{i}] image must be a [C, H, W] tensor, got {shape}")
        images.append(image.as_subclass(Tensor))
    first = images[0]
    for i, image in enumerate(images):
        if image.shape[0] != first.shape[0] or image.dtype != first.dtype:
            raise ValueError(
                f"batch[{i}] image is {image.shape[0]} channels of {image.dtype}, but batch[0] is "
                f"{first.shape[0]} channels of {first.dtype}; all images in a batch must agree"
            )
    sizes = torch.tensor([image.shape[-2:] for image in images], dtype=torch.int64)
    height, width = (-(-sizes.max(0).values // size_divisible) * size_divisible).tolist()
    padded = _empty_batch(first, (len(images), first.shape[0], height, width))
    mask = torch.ones(len(images), height, width, dtype=torch.bool)
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        padded[i, :, :h, :w] = image
        padded[i, :, h:, :] = 0
        padded[i, :, :h, w:] = 0
        mask[i, :h, :w] = False
    return DetectionBatch(padded, mask, [sample[1] for sample in samples], sizes, skipped)


def _empty_batch(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """An uninitialised tensor; in a DataLoader worker it is allocated in shared memory, as
    torch's ``default_collate`` does, so that passing it to the main process copies nothing."""
    if get_worker_info() is None:
        return like.new_empty(shape)
    numel = 1
    for n in shape:
        numel *= n
    storage = like._typed_storage()._new_shared(numel, device=like.device)
    return like.new(storage).resize_(shape)
