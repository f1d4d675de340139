"""Semantic segmentation data: images with PNG masks of class indices, their transforms and
their collation.

Two folder layouts are read:

1. **COCO-listed** (what ``sightkit data synth shapes`` writes)::

       DATA/images/<file_name>              the images listed in the split's JSON
       DATA/masks/<stem of file_name>.png   mask values are category ids, 0 is background
       DATA/annotations/<split>.json        COCO JSON: its images and categories

   Labels are 0 for background and ``i + 1`` for the ``i``-th category in id order.

2. **Folder pairs**, any dataset of images and masks (ADE20K, Cityscapes-style)::

       DATA/images/<split>/**/<name>.<jpg|png|...>
       DATA/masks/<split>/**/<name>.png     same relative path and stem as its image
       DATA/classes.txt                     line k is the name of mask value k

A mask is an 8-bit one-channel PNG (mode ``L``, or ``P`` with palette indices as in Pascal
VOC). The value ``ignore_index`` (255) marks pixels without a label; any other value outside
the classes is an error that names the file.

A sample is ``(image, target)``: ``tv_tensors.Image`` uint8 ``[3, H, W]`` and
``{"mask": tv_tensors.Mask [H, W] int64, "image_id": int, "orig_size": [2] (H, W)}``; the
transforms move the mask with the pixels (nearest neighbour). With ``keep_original=True``
the target also holds ``"orig_mask"``, the untransformed mask, so that evaluation can score
predictions at the original resolution.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from sightkit._api import export
from sightkit.data.coco import UNRECOGNISED, ImageReadError, _pixel_limit, image_problem, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
BACKGROUND = "background"


@dataclass(frozen=True)
class _Pair:
    image: Path
    mask: Path
    image_id: int


def _read_classes(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise ValueError(f"{path}: classes.txt must hold one non-empty class name per line (line k: mask value k)")
    return names


def _coco_pairs(root: Path, annotations: Path) -> tuple[list[_Pair], list[str], np.ndarray]:
    with annotations.open() as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{annotations} is not valid JSON ({error})") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{annotations} must be a COCO object with 'images' and 'categories'")
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    ids = [int(c["id"]) for c in categories]
    if 0 in ids or max(ids, default=0) > 254:
        raise ValueError(
            f"{annotations}: category ids must be in [1, 254] (0 is background in the masks, 255 is ignored), got {ids}"
        )
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[0] = 0
    lookup[ids] = np.arange(1, len(ids) + 1)
    pairs = [
        _Pair(
            root / "images" / image["file_name"],
            root / "masks" / f"{Path(image['file_name']).stem}.png",
            int(image["id"]),
        )
        for image in data["images"]
    ]
    return pairs, [BACKGROUND, *(str(c["name"]) for c in categories)], lookup


def _folder_pairs(root: Path, split: str) -> tuple[list[_Pair], list[str], np.ndarray]:
    image_dir, mask_dir = root / "images" / split, root / "masks" / split
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise FileNotFoundError(
            f"{classes_file} is missing: a folder of image/mask pairs needs classes.txt with the name of mask "
            "value k on line k (e.g. 'background' on the first line)"
        )
    names = _read_classes(classes_file)
    if len(names) > 255:
        raise ValueError(
            f"{classes_file}: at most 255 classes fit 8-bit masks next to ignore value 255, got {len(names)}"
        )
    images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"{image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    pairs = []
    for index, image in enumerate(images):
        mask = (mask_dir / image.relative_to(image_dir)).with_suffix(".png")
        if not mask.is_file():
            raise FileNotFoundError(f"image {image} has no mask: {mask} does not exist")
        pairs.append(_Pair(image, mask, index))
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[: len(names)] = np.arange(len(names))
    return pairs, names, lookup


@export("data.read_mask")
def read_mask(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an 8-bit one-channel PNG mask (mode ``L``, or ``P`` as palette indices) as uint8 ``[H, W]``.

    A mask of more than ``max_pixels`` pixels or a truncated PNG is refused before decoding,
    as :func:`~sightkit.data.coco.read_image` refuses images (``None``: Pillow's limit; 0: none).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"mask {path} does not exist") from None
    except OSError as error:
        raise ImageReadError(path, f"not a readable mask ({error.strerror or error})") from None
    # The header-only image of image_problem: Image.open would apply Pillow's global limit, not max_pixels.
    picture = image_problem(data, _pixel_limit(max_pixels))
    if not isinstance(picture, Image.Image):
        raise ImageReadError(path, f"not a readable mask ({picture or UNRECOGNISED})")
    with picture:
        if picture.mode not in ("L", "P"):
            raise ValueError(
                f"mask {path} must be an 8-bit one-channel PNG of class indices (mode L or P), got mode {picture.mode}"
            )
        try:
            return np.array(picture)
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageReadError(path, f"not a readable mask ({error})") from None


@export("data.SegmentationDataset")
class SegmentationDataset(Dataset):
    """Images and semantic masks of one split, in either layout of the module docstring.

    Args:
        root: the dataset folder.
        split: ``"train"``, ``"val"``, ...: ``annotations/<split>.json`` when it exists,
            else ``images/<split>/`` with ``masks/<split>/``.
        transforms: called as ``transforms(image, target)``, e.g. :func:`segmentation_transforms`.
        ignore_index: the mask value of pixels without a label.
        keep_original: add the untransformed mask as ``target["orig_mask"]``.
        max_pixels: images of more pixels are refused (:func:`~sightkit.data.coco.read_image`;
            ``None``: Pillow's limit; 0: none).

    Attributes:
        classes: the class names; label ``k`` is ``classes[k]``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable[..., Any] | None = None,
        *,
        ignore_index: int = 255,
        keep_original: bool = False,
        max_pixels: int | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data={str(self.root)!r} is not a folder; make one with `sightkit data synth shapes out={self.root}` "
                "or point data= at a folder of images/ and masks/"
            )
        if not 0 <= ignore_index <= 255:
            raise ValueError(f"ignore_index must be in [0, 255] for 8-bit masks, got {ignore_index}")
        annotations = self.root / "annotations" / f"{split}.json"
        if annotations.is_file():
            self.pairs, self.classes, lookup = _coco_pairs(self.root, annotations)
        elif (self.root / "images" / split).is_dir():
            self.pairs, self.classes, lookup = _folder_pairs(self.root, split)
        else:
            raise FileNotFoundError(
                f"no split {split!r} in {self.root}: neither {annotations} nor {self.root / 'images' / split}/ exists"
            )
        if ignore_index < len(self.classes):
            raise ValueError(f"ignore_index={ignore_index} is a class index (there are {len(self.classes)} classes)")
        lookup[ignore_index] = ignore_index
        self._lookup = lookup
        self.split = split
        self.transforms = transforms
        self.ignore_index = ignore_index
        self.keep_original, self.max_pixels = keep_original, max_pixels

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, index: int) -> Path:
        return self.pairs[index].image

    def labels(self, index: int) -> Tensor:
        """The mask of sample ``index`` as int64 ``[H, W]`` labels, untransformed."""
        pair = self.pairs[index]
        values = read_mask(pair.mask, max_pixels=self.max_pixels)
        labels = self._lookup[values]
        if (labels < 0).any():
            bad = sorted(set(np.unique(values[labels < 0]).tolist()))
            raise ValueError(
                f"mask {pair.mask} has values {bad[:10]} that are neither a class (0..{len(self.classes) - 1}) "
                f"nor ignore_index={self.ignore_index}"
            )
        return torch.from_numpy(labels)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        pair = self.pairs[index]
        image = read_image(pair.image, max_pixels=self.max_pixels)
        labels = self.labels(index)
        if tuple(labels.shape) != tuple(image.shape[-2:]):
            raise ValueError(
                f"mask {pair.mask} is {tuple(labels.shape)} (H, W) but image {pair.image} is {tuple(image.shape[-2:])}"
            )
        target: dict[str, Any] = {
            "mask": tv_tensors.Mask(labels),
            "image_id": pair.image_id,
            "orig_size": torch.tensor(labels.shape, dtype=torch.int64),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if self.keep_original:
            target["orig_mask"] = labels
        return image, target


@export("data.segmentation_transforms")
def segmentation_transforms(
    split: str = "train",
    *,
    size: int = 512,
    max_size: int | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    ignore_index: int = 255,
    jitter: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> v2.Compose:
    """The semantic segmentation recipe of torchvision's references, on transforms.v2.

    ``"train"``: resize the shorter side to a random length in ``scale_range * size``,
    horizontal flip, a random ``size x size`` crop (padding the image with 0 and the mask
    with ``ignore_index`` where the image is smaller), colour jitter (brightness, contrast,
    saturation ±0.3; p=0.8). ``"eval"``: resize the shorter side to ``size`` (longer side at
    most ``max_size``). Both end with float32 pixels in ``[0, 1]``, normalised when ``mean``
    and ``std`` are given. Masks are resized by nearest neighbour.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if size < 1 or (max_size is not None and max_size <= size):
        raise ValueError(f"need size >= 1 and max_size > size, got size={size}, max_size={max_size}")
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
    if (mean is None) != (std is None):
        raise ValueError(f"mean and std must be given together, got mean={mean}, std={std}")
    if split == "train":
        steps: list[v2.Transform] = [
            v2.RandomResize(max(1, round(low * size)), max(1, round(high * size)) + 1, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
        ]
    else:
        steps = [v2.Resize(size, max_size=max_size, antialias=True)]
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    if split == "train" and jitter:
        steps.append(v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)], p=0.8))
    if mean is not None and std is not None:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)


@export("data.SegmentationBatch")
class SegmentationBatch(NamedTuple):
    """A padded batch of segmentation samples.

    Attributes:
        images: ``[B, 3, H, W]``, each image at the top-left, zeros elsewhere; ``H, W``
            rounded up to ``size_divisible``.
        masks: int64 ``[B, H, W]``, ``ignore_index`` on padding.
        image_sizes: int64 ``[B, 2]``, ``(h, w)`` of each image before padding.
        orig_masks: the untransformed masks (datasets with ``keep_original=True``), else ``[]``.
    """

    images: Tensor
    masks: Tensor
    image_sizes: Tensor
    orig_masks: list[Tensor]


@export("data.collate_segmentation")
def collate_segmentation(
    samples: Sequence[tuple[Tensor, dict[str, Any]]], size_divisible: int = 32, ignore_index: int = 255
) -> SegmentationBatch:
    """Pad ``(image [3, h, w], {"mask": [h, w], ...})`` samples into a :class:`SegmentationBatch`."""
    if size_divisible < 1:
        raise ValueError(f"size_divisible must be >= 1, got {size_divisible}")
    if not samples:
        raise ValueError("samples is empty; a batch needs at least one (image, target) sample")
    sizes = torch.tensor([tuple(image.shape[-2:]) for image, _ in samples], dtype=torch.int64)
    height, width = (-(-sizes.max(0).values // size_divisible) * size_divisible).tolist()
    first = samples[0][0]
    images = first.new_zeros(len(samples), first.shape[0], height, width).as_subclass(Tensor)
    masks = torch.full((len(samples), height, width), ignore_index, dtype=torch.int64)
    for i, (image, target) in enumerate(samples):
        h, w = image.shape[-2:]
        if tuple(target["mask"].shape) != (h, w):
            raise ValueError(f"samples[{i}]: mask shape {tuple(target['mask'].shape)} differs from image size {(h, w)}")
        images[i, :, :h, :w] = image.as_subclass(Tensor)
        masks[i, :h, :w] = target["mask"].as_subclass(Tensor)
    orig_masks = [target["orig_mask"] for _, target in samples if "orig_mask" in target]
    return SegmentationBatch(images, masks, sizes, orig_masks)
