"""Detection transforms on ``torchvision.transforms.v2`` and tv_tensors, and the presets.

The transforms take a sample ``(image, target)`` as the datasets in :mod:`sightkit.data.coco`
give it and move everything in ``target`` with the pixels: ``BoundingBoxes``, ``Mask``,
``KeyPoints`` and the keypoint visibility. Three are written here because torchvision has
no equivalent:

- :class:`RandomHorizontalFlip` also swaps left/right keypoints (COCO's 17 keypoints, the 5
  face landmarks) and their visibility, and flips keypoints as continuous coordinates
  (``x -> W - x``, like boxes; torchvision's keypoint kernel uses ``W - 1 - x``);
- :class:`RandomSizeCrop` is DETR's crop of a random size;
- :class:`SanitizeInstances` drops degenerate boxes together with *every* per-instance
  entry (torchvision's ``SanitizeBoundingBoxes`` leaves ``KeyPoints`` groups unfiltered)
  and marks keypoints that left the image as unlabelled.

Reference for the recipe: Carion et al., "End-to-End Object Detection with Transformers"
(DETR), ECCV 2020, ``datasets/coco.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

from sightkit._api import export
from sightkit.data.coco import INSTANCE_KEYS

VISIBILITY_KEY = "keypoints_visibility"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _flip_permutation(flip_pairs: Sequence[tuple[int, int]], num_keypoints: int) -> list[int]:
    permutation = list(range(num_keypoints))
    for i, j in flip_pairs:
        if not (0 <= i < num_keypoints and 0 <= j < num_keypoints):
            raise ValueError(f"flip_pairs: pair {(i, j)} is out of range for {num_keypoints} keypoints")
        permutation[i], permutation[j] = j, i
    return permutation


def _map_targets(sample: Any, fn: Any) -> Any:
    """Apply ``fn`` to every dict in a nested tuple/list sample and rebuild the sample."""
    if isinstance(sample, dict):
        return fn(sample)
    if isinstance(sample, tuple | list):
        return type(sample)(_map_targets(item, fn) for item in sample)
    return sample


@export("data.RandomHorizontalFlip")
class RandomHorizontalFlip(v2.Transform):
    """Flip the image, boxes, masks and keypoints left-right with probability ``p``.

    Keypoints ``[..., K, 2]`` go to ``x -> W - x`` and the pairs in ``flip_pairs`` (e.g.
    :func:`sightkit.data.keypoint_flip_pairs` of the keypoint names) swap places, together
    with ``target["keypoints_visibility"]`` ``[..., K]``: after the flip, the "left eye"
    slot holds the eye that is now on the left.
    """

    def __init__(self, p: float = 0.5, flip_pairs: Sequence[tuple[int, int]] = ()) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p = p
        self.flip_pairs = [tuple(pair) for pair in flip_pairs]

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        if torch.rand(1).item() >= self.p:
            return sample
        return super().forward(_map_targets(sample, self._swap_visibility))

    def _swap_visibility(self, target: dict[str, Any]) -> dict[str, Any]:
        if VISIBILITY_KEY not in target or not self.flip_pairs:
            return target
        visibility = target[VISIBILITY_KEY]
        return {**target, VISIBILITY_KEY: visibility[..., _flip_permutation(self.flip_pairs, visibility.shape[-1])]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.KeyPoints):
            points = inpt.as_subclass(Tensor).clone()
            points[..., 0] = inpt.canvas_size[1] - points[..., 0]
            if self.flip_pairs and points.ndim >= 3:
                points = points[..., _flip_permutation(self.flip_pairs, points.shape[-2]), :]
            return tv_tensors.wrap(points, like=inpt)
        return self._call_kernel(F.horizontal_flip, inpt)


@export("data.RandomSizeCrop")
class RandomSizeCrop(v2.Transform):
    """Crop a random ``h x w`` window, with ``h`` and ``w`` drawn uniformly from
    ``[min_size, max_size]`` (capped by the image), at a uniformly random position.

    Boxes are clipped to the window; follow with :class:`SanitizeInstances` to drop those
    left empty. DETR's ``RandomSizeCrop``.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)

        def draw(limit: int) -> int:
            high = min(limit, self.max_size)
            return int(torch.randint(min(self.min_size, high), high + 1, ()).item())

        h, w = draw(height), draw(width)
        top = int(torch.randint(0, height - h + 1, ()).item())
        left = int(torch.randint(0, width - w + 1, ()).item())
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


@export("data.SanitizeInstances")
class SanitizeInstances(v2.Transform):
    """Clamp boxes to the image, drop those smaller than ``min_size`` pixels on a side with
    every per-instance entry of the target (labels, crowd flags, area, masks, keypoints and
    their visibility), and mark keypoints outside the image as unlabelled (visibility 0,
    coordinates 0, COCO's convention).
    """

    def __init__(self, min_size: float = 1.0) -> None:
        super().__init__()
        if min_size <= 0:
            raise ValueError(f"min_size must be > 0 pixels, got {min_size}")
        self.min_size = min_size

    def forward(self, *inputs: Any) -> Any:
        return _map_targets(inputs if len(inputs) > 1 else inputs[0], self._sanitize)

    def _sanitize(self, target: dict[str, Any]) -> dict[str, Any]:
        boxes = target.get("boxes")
        if not isinstance(boxes, tv_tensors.BoundingBoxes):
            return target
        boxes = F.clamp_bounding_boxes(boxes)
        plain = boxes.as_subclass(Tensor)
        valid = ((plain[:, 2] - plain[:, 0]) >= self.min_size) & ((plain[:, 3] - plain[:, 1]) >= self.min_size)
        out = dict(target, boxes=boxes)
        for key in INSTANCE_KEYS:
            if key in out:
                value = out[key]
                kept = value[valid]
                out[key] = tv_tensors.wrap(kept, like=value) if isinstance(value, tv_tensors.TVTensor) else kept
        if "keypoints" in out and VISIBILITY_KEY in out:
            out["keypoints"], out[VISIBILITY_KEY] = _unlabel_outside(out["keypoints"], out[VISIBILITY_KEY])
        return out

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # forward is overridden
        return inpt


def _unlabel_outside(keypoints: tv_tensors.KeyPoints, visibility: Tensor) -> tuple[tv_tensors.KeyPoints, Tensor]:
    height, width = keypoints.canvas_size
    points = keypoints.as_subclass(Tensor)
    x, y = points[..., 0], points[..., 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    visibility = torch.where(inside, visibility, 0)
    points = torch.where((visibility > 0).unsqueeze(-1), points, 0.0)
    return tv_tensors.wrap(points, like=keypoints), visibility


def _scaled(size: int, ratios: Sequence[float]) -> list[int]:
    return sorted({max(1, round(size * r)) for r in ratios})


@export("data.detection_transforms")
def detection_transforms(
    split: str = "train",
    *,
    size: int = 800,
    max_size: int = 1333,
    flip_pairs: Sequence[tuple[int, int]] = (),
    jitter: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> v2.Compose:
    """DETR's detection recipe as a transforms.v2 pipeline, scaled to ``size``.

    ``"train"``: horizontal flip (swapping ``flip_pairs``), then with equal chance either a
    multi-scale resize of the shorter side to one of ``size * (0.60, 0.64, ..., 1.00)`` with
    the longer side at most ``max_size``, or a resize to ``size * (0.5, 0.625, 0.75)``, a
    random crop of ``size * [0.48, 0.75]`` and the multi-scale resize; then
    :class:`SanitizeInstances`, and photometric jitter (brightness, contrast, saturation
    ±0.3; p=0.8). At ``size=800, max_size=1333`` these are DETR's numbers (480..800 step 32,
    400/500/600, 384..600). The jitter runs last, on float pixels: torchvision's colour ops
    are about 3x faster on float32 than on uint8, while resizing is fastest on uint8.

    ``"eval"``: resize the shorter side to ``size`` (longer side at most ``max_size``).

    Both end by converting the image to float32 in ``[0, 1]``; the model normalises it
    (DESIGN.md), unless ``mean`` and ``std`` are given here (e.g. ``IMAGENET_MEAN``,
    ``IMAGENET_STD``).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if size < 1 or max_size <= size:
        raise ValueError(f"need 1 <= size < max_size, got size={size}, max_size={max_size}")
    if (mean is None) != (std is None):
        raise ValueError(f"mean and std must be given together, got mean={mean}, std={std}")
    steps: list[v2.Transform] = []
    if split == "train":
        scales = _scaled(size, [0.6 + 0.04 * k for k in range(11)])
        multi_scale = v2.RandomShortestSize(min_size=scales, max_size=max_size, antialias=True)
        crop_low = max(1, round(size * 0.48))
        crop_high = max(crop_low, round(size * 0.75))
        steps += [
            RandomHorizontalFlip(flip_pairs=flip_pairs),
            v2.RandomChoice(
                [
                    multi_scale,
                    v2.Compose(
                        [
                            v2.RandomShortestSize(min_size=_scaled(size, [0.5, 0.625, 0.75]), antialias=True),
                            RandomSizeCrop(crop_low, crop_high),
                            multi_scale,
                        ]
                    ),
                ]
            ),
            SanitizeInstances(),
        ]
    else:
        steps.append(v2.Resize(size, max_size=max_size, antialias=True))
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    if split == "train" and jitter:
        steps.append(v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)], p=0.8))
    if mean is not None and std is not None:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)
