"""Top-down person crops for pose estimation, one sample per person, on COCO keypoint data.

The person boxes are the ground truth's (training, and "GT box" evaluation) or a detector's
(a COCO results JSON). Each box becomes a crop region of the model's aspect ratio, enlarged
by ``padding`` (SimpleBaseline: 1.25); for training the region is randomly scaled, turned
and flipped. One affine map (:func:`sightkit.ops.get_affine_transform`) warps the image
(OpenCV, bilinear, black outside the image) and moves the keypoints; its inverse, returned
with the sample, maps predictions back to the image.

A sample is ``(image, target)``:

- ``image``: float32 ``[3, H, W]``, normalised with ``mean`` / ``std``;
- ``target["keypoints"]``: float32 ``[K, 3]``, crop pixels and visibility; a keypoint that is
  unlabelled or falls outside the crop has ``v = 0`` (it gets no loss);
- ``target["image_keypoints"]``: float32 ``[K, 3]``, the ground truth in image pixels (all
  zero for detector boxes, which have no matched ground truth);
- ``target["inverse"]``: float64 ``[2, 3]``, crop to image pixels;
- ``target["box"]``: float32 ``[4]`` ``xyxy`` image pixels; ``target["score"]``: the box's
  score (1 for ground truth); ``target["area"]``: COCO's area of the instance (the box area
  for detections); ``target["image_id"]``: int64.

:func:`collate_topdown` stacks samples into ``(images [B, 3, H, W], {key: [B, ...]})``.

Reference: Xiao et al., "Simple Baselines for Human Pose Estimation and Tracking", ECCV 2018
(crop, augmentation ranges); the OpenCV warp is corrected for its pixel-centre convention so
that crops follow sightkit's continuous coordinates (see :mod:`sightkit.ops.keypoints`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from sightkit._api import export
from sightkit.data.coco import CocoKeypoints, ImageReadError, read_image
from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sightkit.ops.keypoints import (
    affine_keypoints,
    box_to_center_size,
    flip_keypoints,
    get_affine_transform,
    invert_affine,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Person:
    record: int  # index into the dataset's records
    box: tuple[float, float, float, float]  # xyxy
    score: float
    area: float
    keypoints: np.ndarray | None  # [K, 3] ground truth in image pixels


def read_detections(path: str | Path, image_ids: set[int], category_id: int) -> list[dict[str, Any]]:
    """Person detections from a COCO results JSON (``[{"image_id", "bbox": [x, y, w, h],
    "score", "category_id"?}, ...]``), with clear errors for malformed files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes={str(path)!r} does not exist; give a COCO results JSON of person boxes")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"boxes={str(path)!r} is not valid JSON ({error})") from None
    if not isinstance(records, list):
        raise ValueError(f"boxes={str(path)!r} must hold a list of detections, got {type(records).__name__}")
    kept = []
    for index, record in enumerate(records):
        try:
            image_id, bbox, score = int(record["image_id"]), [float(v) for v in record["bbox"]], float(record["score"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"boxes={str(path)!r}: detection {index} needs image_id, bbox [x, y, w, h] and score ({error})"
            ) from None
        if len(bbox) != 4:
            raise ValueError(f"boxes={str(path)!r}: detection {index} has a bbox of {len(bbox)} numbers, not 4")
        if image_id not in image_ids:
            raise ValueError(f"boxes={str(path)!r}: detection {index} has image_id {image_id}, not in the annotations")
        if int(record.get("category_id", category_id)) == category_id:
            kept.append({"image_id": image_id, "bbox": bbox, "score": score})
    return kept


@export("data.TopDownKeypoints")
class TopDownKeypoints(Dataset):
    """Person crops of a COCO keypoints dataset (module docstring for the sample format).

    Args:
        images: folder the image ``file_name``s are relative to.
        annotations: the COCO keypoints JSON (ground truth).
        input_size: ``(H, W)`` of the crops (the papers: 256 x 192).
        boxes: a COCO results JSON of person detections to crop instead of the ground-truth
            boxes (evaluation with a detector); ``None``: ground truth.
        train: random augmentation (scale, rotation, flip).
        padding: enlargement of the box (after fixing its aspect ratio).
        scale_jitter: training scale factor ``s`` drawn from ``N(1, scale_jitter)`` clipped
            to ``1 +- scale_jitter`` (SimpleBaseline: 0.3).
        rotation: training rotation, degrees, drawn from ``N(0, rotation)`` clipped to
            ``+-2 rotation`` with probability ``rotation_prob`` (SimpleBaseline: 40, 0.6).
        flip_prob: training probability of a horizontal flip (left/right keypoints swap).
        mean, std: image normalisation (ImageNet's by default).
        min_keypoints: ground-truth persons with fewer labelled keypoints are left out.
        min_score: detections scoring lower are left out.
        on_error: ``"raise"`` or ``"skip"`` (the sample becomes ``None``, which
            :func:`collate_topdown` drops) for unreadable images.
        max_pixels: images of more pixels are unreadable (:func:`~sightkit.data.coco.read_image`;
            ``None``: Pillow's limit; 0: none).
    """

    def __init__(
        self,
        images: str | Path,
        annotations: str | Path,
        input_size: Sequence[int] = (256, 192),
        *,
        boxes: str | Path | None = None,
        train: bool = False,
        padding: float = 1.25,
        scale_jitter: float = 0.3,
        rotation: float = 40.0,
        rotation_prob: float = 0.6,
        flip_prob: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        min_keypoints: int = 1,
        min_score: float = 0.0,
        on_error: str = "raise",
        max_pixels: int | None = None,
    ) -> None:
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (H, W) with positive sides, got {tuple(input_size)}")
        if not 0 <= flip_prob <= 1 or not 0 <= rotation_prob <= 1:
            raise ValueError(f"flip_prob and rotation_prob must be in [0, 1], got {flip_prob} and {rotation_prob}")
        if not 0 <= scale_jitter < 1 or rotation < 0 or padding <= 0:
            raise ValueError(
                f"need 0 <= scale_jitter < 1, rotation >= 0 and padding > 0, got {scale_jitter}, {rotation}, {padding}"
            )
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.coco = CocoKeypoints(images, annotations, min_keypoints=min_keypoints)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.train, self.padding = train, padding
        self.scale_jitter, self.rotation, self.rotation_prob, self.flip_prob = (
            scale_jitter,
            rotation,
            rotation_prob,
            flip_prob,
        )
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255
        self.on_error, self.max_pixels = on_error, max_pixels
        self.skipped = 0
        self.uses_detections = boxes is not None
        self.people = self._detected(boxes, min_score) if boxes is not None else self._ground_truth()

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return self.coco.keypoint_names

    @property
    def flip_pairs(self) -> list[tuple[int, int]]:
        return self.coco.flip_pairs

    @property
    def num_keypoints(self) -> int:
        return len(self.coco.keypoint_names)

    @property
    def annotation_file(self) -> Path:
        return self.coco.annotation_file

    def _ground_truth(self) -> list[_Person]:
        people = []
        for index, record in enumerate(self.coco.records):
            assert record.keypoints is not None  # CocoKeypoints always fills them
            for box, area, keypoints in zip(record.boxes, record.area, record.keypoints, strict=True):
                people.append(_Person(index, tuple(float(v) for v in box), 1.0, float(area), keypoints))
        return people

    def _detected(self, boxes: str | Path, min_score: float) -> list[_Person]:
        index_of = {record.image_id: i for i, record in enumerate(self.coco.records)}
        people = []
        for detection in read_detections(boxes, set(index_of), self.coco.keypoint_category_id):
            if detection["score"] < min_score:
                continue
            record = self.coco.records[index_of[detection["image_id"]]]
            x, y, w, h = detection["bbox"]
            x1, y1 = min(max(x, 0.0), record.width), min(max(y, 0.0), record.height)
            x2, y2 = min(max(x + w, 0.0), record.width), min(max(y + h, 0.0), record.height)
            if x2 > x1 and y2 > y1:
                area = (x2 - x1) * (y2 - y1)
                people.append(
                    _Person(index_of[detection["image_id"]], (x1, y1, x2, y2), detection["score"], area, None)
                )
        return people

    def __len__(self) -> int:
        return len(self.people)

    def image_path(self, index: int) -> Path:
        """The image file sample ``index`` is cut from (for the trainer's pre-flight check)."""
        return self.coco.root / self.coco.records[self.people[index].record].file_name

    def _augmentation(self) -> tuple[float, float, bool]:
        if not self.train:
            return 1.0, 0.0, False
        jitter = self.scale_jitter
        scale = float(torch.randn(()).mul(jitter).add(1).clamp(1 - jitter, 1 + jitter))
        turn = float(torch.randn(()).mul(self.rotation).clamp(-2 * self.rotation, 2 * self.rotation))
        rotation = turn if float(torch.rand(())) < self.rotation_prob else 0.0
        return scale, rotation, float(torch.rand(())) < self.flip_prob

    def crop_matrix(self, box: Sequence[float], scale: float = 1.0, rotation: float = 0.0) -> Tensor:
        """The float64 ``[2, 3]`` image-to-crop map of an ``xyxy`` box, scaled and turned."""
        height, width = self.input_size
        center, size = box_to_center_size(torch.tensor(box, dtype=torch.float64), width / height, self.padding)
        return get_affine_transform(center, size * scale, (width, height), rotation)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        person = self.people[index]
        record = self.coco.records[person.record]
        path = self.coco.root / record.file_name
        try:
            image = read_image(path, max_pixels=self.max_pixels)
        except ImageReadError as error:
            if self.on_error == "raise":
                raise
            self.skipped += 1
            logger.warning("skipping sample %d: %s", index, error)
            return None
        scale, rotation, flip = self._augmentation()
        height, width = self.input_size
        matrix = self.crop_matrix(person.box, scale, rotation)
        crop = torch.from_numpy(warp_image(image.numpy().transpose(1, 2, 0), matrix, self.input_size))
        truth = person.keypoints if person.keypoints is not None else np.zeros((self.num_keypoints, 3), np.float32)
        truth = torch.from_numpy(truth)
        keypoints = affine_keypoints(truth.double(), matrix)
        if flip:
            # Mirroring the pixel columns is exactly x -> W - x in continuous coordinates.
            crop = crop.flip(1)
            keypoints = flip_keypoints(keypoints, width, self.flip_pairs)
            mirror = torch.tensor([[-1.0, 0.0, width], [0.0, 1.0, 0.0]], dtype=torch.float64)
            matrix = torch.cat([mirror[:, :2] @ matrix[:, :2], mirror[:, :2] @ matrix[:, 2:] + mirror[:, 2:]], 1)
        pixels = (crop.permute(2, 0, 1).float() - self.mean) / self.std
        inside = (
            (keypoints[:, 0] >= 0) & (keypoints[:, 0] < width) & (keypoints[:, 1] >= 0) & (keypoints[:, 1] < height)
        )
        keypoints[:, 2] = torch.where(inside & (keypoints[:, 2] > 0), keypoints[:, 2], 0.0)
        target = {
            "keypoints": keypoints.float(),
            "image_keypoints": truth.float(),
            "inverse": invert_affine(matrix),
            "box": torch.tensor(person.box, dtype=torch.float32),
            "score": torch.tensor(person.score, dtype=torch.float32),
            "area": torch.tensor(person.area, dtype=torch.float32),
            "image_id": torch.tensor(record.image_id, dtype=torch.int64),
        }
        return pixels, target


@export("data.warp_image")
def warp_image(image: np.ndarray, matrix: Tensor, output_size: Sequence[int]) -> np.ndarray:
    """Warp ``image`` (uint8 ``[h, w, C]``) by the continuous-coordinate affine map ``matrix``
    ``[2, 3]`` into an ``output_size`` ``(H, W)`` image, bilinear, zeros outside.

    OpenCV puts pixel centres at integer coordinates and sightkit at half-integers
    (``x_cv = x - 0.5``), so the map OpenCV gets is ``[A | t + A (0.5, 0.5) - 0.5]``.
    """
    m = matrix.double().numpy()
    shift = m[:, 2] + m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    opencv = np.concatenate([m[:, :2], shift[:, None]], axis=1)
    height, width = output_size
    warped = cv2.warpAffine(image, opencv, (int(width), int(height)), flags=cv2.INTER_LINEAR, borderValue=0)
    return warped if warped.ndim == 3 else warped[..., None]


@export("data.collate_topdown")
def collate_topdown(samples: Sequence[tuple[Tensor, dict[str, Tensor]] | None]) -> tuple[Tensor, dict[str, Tensor]]:
    """Stack top-down samples into ``(images [B, 3, H, W], {key: [B, ...]})``, leaving out
    ``None`` samples (unreadable images under ``on_error="skip"``)."""
    kept = [sample for sample in samples if sample is not None]
    if not kept:
        raise ValueError(f"collate_topdown: all {len(samples)} samples of the batch are missing (unreadable images)")
    return default_collate(kept)
