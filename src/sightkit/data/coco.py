"""COCO-format datasets: detection (boxes, labels, crowd flags, instance masks) and keypoints.

Both read a COCO JSON file once, keep each image's annotations as small numpy arrays, and
read the images lazily (``torchvision.io``, libjpeg/libpng) when a sample is asked for.
A sample is ``(image, target)``:

- ``image``: ``tv_tensors.Image`` uint8 ``[3, H, W]`` RGB;
- ``target["boxes"]``: ``tv_tensors.BoundingBoxes`` ``[N, 4]`` float32, ``xyxy`` absolute
  pixels, ``canvas_size=(H, W)``;
- ``target["labels"]``: int64 ``[N]``, contiguous ``0..C-1`` in increasing category-id order
  (:class:`CategoryMap` converts to and from COCO category ids);
- ``target["iscrowd"]``: int64 ``[N]``; ``target["area"]``: float32 ``[N]`` (COCO's area);
- ``target["masks"]``: ``tv_tensors.Mask`` uint8 ``[N, H, W]`` when ``masks=True`` (polygons
  and RLE are decoded with faster-coco-eval's pycocotools-compatible mask API);
- ``target["image_id"]``: int; ``target["orig_size"]``: int64 ``[2]`` as ``(H, W)``.

The keypoints dataset adds ``target["keypoints"]``: ``tv_tensors.KeyPoints`` ``[N, K, 2]`` and
``target["keypoints_visibility"]``: int64 ``[N, K]`` with COCO's codes (0 unlabelled,
1 labelled but hidden, 2 visible); :func:`keypoints_xyv` packs them into ``[N, K, 3]``.

Coordinates are continuous: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, so a COCO box
``[x, y, w, h]`` is ``[x, y, x+w, y+h]`` and a keypoint ``(x, y)`` lies in pixel
``(floor(y), floor(x))``. Keypoint coordinates are taken from the file as they are.

Images without annotations are kept (they are the negatives). Crowd annotations are left
out of the targets unless ``include_crowd=True`` (COCO evaluation reads them from the JSON
file itself). As in DETR's and torchvision's references, boxes are clamped to the image and
boxes with no area left are dropped; ``sightkit data check`` reports them.

Reference: Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014.
"""

from __future__ import annotations

import io
import json
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from faster_coco_eval.core import mask as coco_mask
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from sightkit._api import export

logger = logging.getLogger(__name__)

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
export("data.COCO_KEYPOINT_NAMES")(COCO_KEYPOINT_NAMES)

#: COCO's person skeleton, 1-based keypoint indices as in the JSON ``categories`` record.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip

#: The 5 face landmarks in ArcFace order; "left" is the image-left one.
FACE_LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
export("data.FACE_LANDMARK_NAMES")(FACE_LANDMARK_NAMES)

INSTANCE_KEYS = ("boxes", "labels", "iscrowd", "area", "masks", "keypoints", "keypoints_visibility")
"""Target keys that hold one entry per instance (filtered together when instances are dropped)."""


@export("data.keypoint_flip_pairs")
def keypoint_flip_pairs(names: Sequence[str]) -> list[tuple[int, int]]:
    """The index pairs ``(i, j)`` whose keypoints swap under a horizontal flip: ``names[i]``
    contains ``"left"`` and ``names[j]`` is the same name with ``"right"``.

    >>> keypoint_flip_pairs(COCO_KEYPOINT_NAMES)[:2]
    [(1, 2), (3, 4)]
    """
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        if "left" in name:
            j = index.get(name.replace("left", "right"))
            if j is None:
                raise ValueError(f"keypoint names: {name!r} has no 'right' counterpart in {list(names)}")
            pairs.append((i, j))
    return pairs


@export("data.keypoints_xyv")
def keypoints_xyv(keypoints: Tensor, visibility: Tensor) -> Tensor:
    """Pack keypoints ``[..., K, 2]`` and visibility ``[..., K]`` into float32 ``[..., K, 3]``
    (x, y, v), the layout the pose models and losses use."""
    if keypoints.shape[:-1] != visibility.shape or keypoints.shape[-1:] != (2,):
        raise ValueError(
            f"keypoints must be [..., K, 2] and visibility [..., K]; got {tuple(keypoints.shape)} "
            f"and {tuple(visibility.shape)}"
        )
    points = keypoints.as_subclass(Tensor).float()
    return torch.cat([points, visibility.unsqueeze(-1).to(points.dtype)], dim=-1)


@export("data.CategoryMap")
@dataclass(frozen=True)
class CategoryMap:
    """Contiguous labels ``0..C-1`` and back to COCO category ids.

    Label ``i`` is the ``i``-th category in increasing id order, so the mapping depends only
    on the set of ids in the file.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_coco(cls, categories: Sequence[dict[str, Any]]) -> CategoryMap:
        """Build from a COCO ``categories`` list (records with ``id`` and ``name``)."""
        records = sorted(categories, key=lambda c: c["id"])
        ids = tuple(int(c["id"]) for c in records)
        if len(set(ids)) != len(ids):
            raise ValueError(f"categories: duplicate category ids in {list(ids)}")
        return cls(ids, tuple(str(c.get("name", c["id"])) for c in records))

    def __len__(self) -> int:
        return len(self.category_ids)

    def to_labels(self, category_ids: Tensor | Sequence[int]) -> Tensor:
        """COCO category ids -> int64 labels; an unknown id is a ``ValueError``."""
        ids = torch.as_tensor(category_ids, dtype=torch.int64)
        table = torch.tensor(self.category_ids, dtype=torch.int64)
        found = ids.unsqueeze(-1) == table
        unknown = ~found.any(-1)
        if unknown.any():
            raise ValueError(
                f"category_ids: unknown ids {ids[unknown].unique().tolist()}; known {list(table.tolist())}"
            )
        return found.to(torch.int64).argmax(-1)

    def to_category_ids(self, labels: Tensor | Sequence[int]) -> Tensor:
        """Int labels in ``[0, C)`` -> COCO category ids (int64), to write predictions back."""
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(self)):
            raise ValueError(f"labels must be in [0, {len(self)}), got values in [{labels.min()}, {labels.max()}]")
        return torch.tensor(self.category_ids, dtype=torch.int64)[labels]


@export("data.ImageReadError")
class ImageReadError(OSError):
    """An image file that is missing, unreadable, corrupt, or not the size its record says."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot use image {str(path)!r}: {reason}")
        self.path = str(path)


#: The default pixel limit of :func:`read_image`: Pillow's ``Image.MAX_IMAGE_PIXELS`` (89,478,485,
#: about 9,459 x 9,459), above which Pillow warns of a decompression bomb.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 0
export("data.DEFAULT_MAX_PIXELS")(DEFAULT_MAX_PIXELS)


@export("data.read_image")
def read_image(path: str | Path, *, max_pixels: int | None = None) -> tv_tensors.Image:
    """Read an image file as ``tv_tensors.Image`` uint8 ``[3, H, W]`` RGB, pixels as stored
    (EXIF orientation is ignored, as COCO's ``width``/``height`` describe the stored pixels).

    Before decoding, the header gives the size, and an image of more than ``max_pixels``
    pixels is refused (a small PNG can hold 20000 x 20000 pixels, gigabytes once decoded);
    a JPEG without its end-of-image marker after the image data, or a PNG without its
    ``IEND`` chunk, is refused as truncated (decoders fill the missing part with grey and
    only print a warning). OpenCV decodes (libjpeg-turbo, libpng, WebP, TIFF, BMP; as fast
    as ``torchvision.io``, whose decoders are deprecated since torchvision 0.29); Pillow is
    the fallback for what OpenCV cannot read (e.g. GIF) and explains failures.

    Args:
        path: the image file.
        max_pixels: the largest ``width * height`` accepted; ``None``: Pillow's
            ``Image.MAX_IMAGE_PIXELS`` at call time (:data:`DEFAULT_MAX_PIXELS` unless changed);
            0: no limit.

    Raises:
        ImageReadError: (an ``OSError``) the file is missing, unreadable, corrupt, truncated or
            too large; the message names the path.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as error:
        raise ImageReadError(path, f"cannot be read ({error.strerror or error})") from None
    limit = _pixel_limit(max_pixels)
    header = image_problem(data, limit)
    if isinstance(header, str):
        raise ImageReadError(path, header)
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is None:
        if header is None:
            raise ImageReadError(path, UNRECOGNISED)
        array = _decode_with_pillow(path, header)
    height, width = array.shape[:2]
    if limit and height * width > limit:  # a format whose header Pillow could not read
        raise ImageReadError(path, _too_large(width, height, limit))
    return tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1))


#: Why a file no decoder reads is refused.
UNRECOGNISED = "no image decoder recognises it (corrupt, cut short inside its header, or not an image)"


def _pixel_limit(max_pixels: int | None) -> int:
    if max_pixels is None:
        return Image.MAX_IMAGE_PIXELS or 0
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0:
        raise ValueError(f"max_pixels must be an integer >= 0 (0: no limit), got {max_pixels!r}")
    return max_pixels


def _too_large(width: int, height: int, limit: int) -> str:
    return (
        f"it has {width}x{height} = {width * height:,} pixels, more than max_pixels={limit:,} "
        "(raise max_pixels= to read it, or resize it)"
    )


def _open_header(data: bytes) -> Image.Image | None:
    """Pillow's image object with only the header parsed, or None when no plugin knows the format.

    The plugin loop of ``Image.open`` without its decompression-bomb check, whose limit is
    Pillow's global and not ``max_pixels``.
    """
    prefix = data[:16]
    for load_plugins in (Image.preinit, Image.init):
        load_plugins()
        for name in Image.ID:
            factory, accept = Image.OPEN[name]
            try:
                accepted = True if accept is None else accept(prefix)
                if accepted and not isinstance(accepted, str):  # a str is a plugin's "cannot read this" message
                    return factory(io.BytesIO(data), "")
            except (SyntaxError, IndexError, TypeError, ValueError, struct.error, OSError):
                continue
    return None


def _jpeg_truncated(data: bytes) -> bool:
    """Whether the JPEG in ``data`` lacks the end-of-image marker (FF D9) after its first scan.

    The header segments are walked to the first start-of-scan marker (FF DA); inside the
    entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so an
    FF D9 after it can only be the end of the image (trailing bytes after it are allowed).
    """
    position, size = 2, len(data)
    while position + 4 <= size:
        if data[position] != 0xFF:
            return True
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA:
            return data.rfind(b"\xff\xd9", position) < 0
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        position += 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
    return True


def image_problem(data: bytes, max_pixels: int) -> str | Image.Image | None:
    """Check an encoded image without decoding it: its header, its size against ``max_pixels``
    (0: no limit) and, for JPEG and PNG, that the file is complete.

    Returns:
        A reason (str) when the image must not be used; else Pillow's header-only image, or
        None for a format whose header Pillow cannot read.
    """
    if not data:
        return "the file is empty (0 bytes)"
    header = _open_header(data)
    if header is None:
        return None
    width, height = header.size
    if max_pixels and width * height > max_pixels:
        return _too_large(width, height, max_pixels)
    if header.format == "JPEG" and _jpeg_truncated(data):
        return "truncated JPEG: the end-of-image marker is missing (the file was cut short)"
    # IEND's chunk always has length 0, so its 8 bytes (length + type) mark a complete PNG.
    if header.format == "PNG" and data.rfind(b"\x00\x00\x00\x00IEND") < 0:
        return "truncated PNG: the IEND chunk is missing (the file was cut short)"
    return header


def _decode_with_pillow(path: Path, header: Image.Image) -> np.ndarray:
    try:
        with header:
            return np.array(header.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"not a readable image ({error})") from None


@dataclass
class _ImageRecord:
    """One image and its annotations, as arrays (cheap to pickle into loader workers)."""

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray  # [n, 4] float32 xyxy, clamped to the image
    labels: np.ndarray  # [n] int64, contiguous
    iscrowd: np.ndarray  # [n] int64
    area: np.ndarray  # [n] float32
    segmentations: list[Any]
    keypoints: np.ndarray | None  # [n, K, 3] float32


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"annotations: COCO JSON file {str(path)!r} does not exist")
    with path.open() as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"annotations: {str(path)!r} is not valid JSON ({error})") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"annotations: {str(path)!r} must be a COCO object with 'images' and 'categories'")
    return data


@export("data.CocoDetection")
class CocoDetection(Dataset):
    """COCO detection dataset: boxes, contiguous labels, crowd flags, optional instance masks.

    Args:
        images: folder that the ``file_name`` of each image record is relative to.
        annotations: the COCO JSON file.
        transforms: called as ``transforms(image, target)`` (torchvision.transforms.v2 style),
            e.g. :func:`sightkit.data.detection_transforms`.
        masks: also decode instance masks into ``target["masks"]``.
        include_crowd: keep ``iscrowd=1`` annotations in the targets (default: left out, as
            for training).
        on_error: ``"raise"`` (default) raises :class:`ImageReadError` naming the path of a
            missing, corrupt or wrongly sized image; ``"skip"`` logs it, counts it in
            ``skipped`` and returns ``None``, which :func:`collate_detection` drops and counts.
        max_pixels: images of more pixels are refused (see :func:`read_image`; ``None``:
            Pillow's limit, 0: none).

    See the module docstring for the sample format.
    """

    def __init__(
        self,
        images: str | Path,
        annotations: str | Path,
        transforms: Callable[..., Any] | None = None,
        *,
        masks: bool = False,
        include_crowd: bool = False,
        on_error: str = "raise",
        max_pixels: int | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(images)
        self.annotation_file = Path(annotations)
        self.transforms = transforms
        self.masks = masks
        self.include_crowd = include_crowd
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.skipped = 0
        data = _load_json(self.annotation_file)
        self.categories: list[dict[str, Any]] = sorted(data["categories"], key=lambda c: c["id"])
        self.category_map = CategoryMap.from_coco(self.categories)
        self._label_of = {category_id: i for i, category_id in enumerate(self.category_map.category_ids)}
        self._read_categories(data["categories"])
        self.records = self._index(data)

    def _read_categories(self, categories: list[dict[str, Any]]) -> None:
        """Hook for subclasses that need more from the categories before the annotations are indexed."""

    def _annotation_filter(self, annotation: dict[str, Any]) -> bool:
        return True

    def _index(self, data: dict[str, Any]) -> list[_ImageRecord]:
        where = str(self.annotation_file)
        known_categories = set(self.category_map.category_ids)
        by_image: dict[int, list[dict[str, Any]]] = {}
        order: list[dict[str, Any]] = []
        for image in data["images"]:
            try:
                image_id = int(image["id"])
                info = {"id": image_id, "file_name": str(image["file_name"])}
                info["height"], info["width"] = int(image["height"]), int(image["width"])
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(
                    f"{where}: image record {image!r} needs id, file_name, height, width ({error})"
                ) from None
            if image_id in by_image:
                raise ValueError(f"{where}: duplicate image id {image_id}")
            by_image[image_id] = []
            order.append(info)
        for ann in data.get("annotations", []):
            try:
                image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
                if len(ann["bbox"]) != 4:
                    raise ValueError("bbox must have 4 numbers")
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(
                    f"{where}: annotation id {ann.get('id')!r} needs image_id, category_id and bbox [x, y, w, h] "
                    f"({error})"
                ) from None
            if image_id not in by_image:
                raise ValueError(f"{where}: annotation id {ann.get('id')!r} refers to unknown image_id {image_id}")
            if category_id not in known_categories:
                raise ValueError(
                    f"{where}: annotation id {ann.get('id')!r} has unknown category_id {category_id}; "
                    f"known {sorted(known_categories)}"
                )
            if self.masks and not ann.get("segmentation"):
                raise ValueError(f"{where}: masks=True but annotation id {ann.get('id')!r} has no segmentation")
            if (self.include_crowd or not ann.get("iscrowd", 0)) and self._annotation_filter(ann):
                by_image[image_id].append(ann)
        return [self._record(info, by_image[info["id"]]) for info in order]

    def _record(self, info: dict[str, Any], anns: list[dict[str, Any]]) -> _ImageRecord:
        height, width = info["height"], info["width"]
        xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        anns = [a for a, k in zip(anns, keep, strict=True) if k]
        return _ImageRecord(
            image_id=info["id"],
            file_name=info["file_name"],
            height=height,
            width=width,
            boxes=boxes[keep].astype(np.float32),
            labels=np.asarray([self._label_of[int(a["category_id"])] for a in anns], dtype=np.int64),
            iscrowd=np.asarray([a.get("iscrowd", 0) for a in anns], dtype=np.int64),
            area=np.asarray([a.get("area", 0.0) for a in anns], dtype=np.float32),
            segmentations=[a.get("segmentation") for a in anns] if self.masks else [],
            keypoints=self._keypoints(anns),
        )

    def _keypoints(self, anns: list[dict[str, Any]]) -> np.ndarray | None:
        return None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def image_ids(self) -> list[int]:
        """COCO image id of each sample, in dataset order."""
        return [r.image_id for r in self.records]

    def image_path(self, index: int) -> Path:
        return self.root / self.records[index].file_name

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]] | None:
        record = self.records[index]
        path = self.image_path(index)
        try:
            image = read_image(path, max_pixels=self.max_pixels)
            if tuple(image.shape[-2:]) != (record.height, record.width):
                raise ImageReadError(
                    path,
                    f"its size is {image.shape[-2]}x{image.shape[-1]} (HxW) but image id {record.image_id} "
                    f"in {str(self.annotation_file)!r} says {record.height}x{record.width}",
                )
        except ImageReadError as error:
            if self.on_error == "raise":
                raise
            self.skipped += 1
            logger.warning("skipping sample %d: %s", index, error)
            return None
        target = self._target(record)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _target(self, record: _ImageRecord) -> dict[str, Any]:
        canvas = (record.height, record.width)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(record.boxes), format="XYXY", canvas_size=canvas),
            "labels": torch.from_numpy(record.labels),
            "iscrowd": torch.from_numpy(record.iscrowd),
            "area": torch.from_numpy(record.area),
            "image_id": record.image_id,
            "orig_size": torch.tensor(canvas, dtype=torch.int64),
        }
        if self.masks:
            target["masks"] = tv_tensors.Mask(decode_masks(record.segmentations, record.height, record.width))
        return target


@export("data.decode_masks")
def decode_masks(segmentations: Sequence[Any], height: int, width: int) -> Tensor:
    """Decode COCO segmentations (polygon lists, uncompressed or compressed RLE) into a
    uint8 ``[N, height, width]`` tensor of 0/1, with faster-coco-eval's mask API."""
    if not segmentations:
        return torch.zeros(0, height, width, dtype=torch.uint8)
    rles = []
    for segmentation in segmentations:
        if isinstance(segmentation, list):  # polygons of one object: merge their RLEs
            rles.append(coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width)))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rles.append(coco_mask.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            rles.append(segmentation)
        else:
            raise ValueError(f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}")
    masks = coco_mask.decode(rles)  # [H, W, N], Fortran order
    return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))


@export("data.CocoKeypoints")
class CocoKeypoints(CocoDetection):
    """COCO keypoints dataset: the detection targets of the keypoint category plus
    ``target["keypoints"]`` (``tv_tensors.KeyPoints`` ``[N, K, 2]``) and
    ``target["keypoints_visibility"]`` (int64 ``[N, K]``, COCO codes 0/1/2).

    The keypoint names come from the first category with a ``keypoints`` list (17 for COCO
    person, 5 for sightkit's synthetic faces); ``flip_pairs`` is derived from them.

    Args:
        min_keypoints: leave out instances with fewer labelled keypoints (``v > 0``).
        Other arguments as :class:`CocoDetection`.
    """

    def __init__(
        self,
        images: str | Path,
        annotations: str | Path,
        transforms: Callable[..., Any] | None = None,
        *,
        masks: bool = False,
        include_crowd: bool = False,
        on_error: str = "raise",
        min_keypoints: int = 0,
        max_pixels: int | None = None,
    ) -> None:
        self.min_keypoints = min_keypoints
        super().__init__(
            images,
            annotations,
            transforms,
            masks=masks,
            include_crowd=include_crowd,
            on_error=on_error,
            max_pixels=max_pixels,
        )

    def _read_categories(self, categories: list[dict[str, Any]]) -> None:
        with_keypoints = [c for c in categories if c.get("keypoints")]
        if not with_keypoints:
            raise ValueError(f"annotations: {str(self.annotation_file)!r} has no category with a 'keypoints' list")
        self.keypoint_category_id = int(with_keypoints[0]["id"])
        self.keypoint_names: tuple[str, ...] = tuple(with_keypoints[0]["keypoints"])
        self.skeleton: list[list[int]] = with_keypoints[0].get("skeleton", [])
        self.flip_pairs = keypoint_flip_pairs(self.keypoint_names)

    def _annotation_filter(self, annotation: dict[str, Any]) -> bool:
        if int(annotation["category_id"]) != self.keypoint_category_id:
            return False
        points = annotation.get("keypoints")
        if points is None or len(points) != 3 * len(self.keypoint_names):
            raise ValueError(
                f"{self.annotation_file}: annotation id {annotation.get('id')!r} needs "
                f"{3 * len(self.keypoint_names)} keypoint numbers, got {None if points is None else len(points)}"
            )
        return sum(v > 0 for v in points[2::3]) >= self.min_keypoints

    def _keypoints(self, anns: list[dict[str, Any]]) -> np.ndarray:
        points = np.asarray([a["keypoints"] for a in anns], dtype=np.float32)
        return points.reshape(len(anns), len(self.keypoint_names), 3)

    def _target(self, record: _ImageRecord) -> dict[str, Any]:
        target = super()._target(record)
        points = torch.from_numpy(record.keypoints)
        target["keypoints"] = tv_tensors.KeyPoints(points[..., :2], canvas_size=(record.height, record.width))
        target["keypoints_visibility"] = points[..., 2].to(torch.int64)
        return target
