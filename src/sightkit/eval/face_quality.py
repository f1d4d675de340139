"""Face quality: how usable a detected face is for recognition, and the thresholds that keep
poor faces out of a gallery.

A :class:`FaceQuality` record holds, per face:

- ``size``: the side, in source-image pixels, of the square that the aligned crop covers
  (the crop side over the scale of the similarity that aligns the face): the face's
  resolution, independent of how loosely a detector draws its box;
- ``yaw``, ``pitch``, ``roll``: the head pose from the 5 landmarks (:func:`sightkit.ops.head_pose`);
- ``sharpness``: the variance of the Laplacian of the aligned crop's grey levels (Pech-Pacheco
  et al., "Diatom autofocusing in brightfield microscopy: a comparative study", ICPR 2000),
  over its central 3/4 (the face more than the background) and only where the crop lies inside
  the image (the zeros beyond an image edge would read as sharp edges); blur and upsampling
  from a small face both lower it;
- ``score``: the detector's confidence (NaN when the faces come without one).

:class:`QualityThresholds` (the ``min_face=``, ``max_yaw=``, ``min_sharpness=``, ``min_score=``
keys of the face commands) says why a face fails: :meth:`QualityThresholds.failures` gives
the reasons per face, an empty list for a face that passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from sightkit._api import export
from sightkit.ops.align import align_faces
from sightkit.ops.head_pose import head_pose

#: ITU-R BT.601 luma weights, as OpenCV's RGB -> grey conversion.
GREY_WEIGHTS = (0.299, 0.587, 0.114)


@export("eval.laplacian_variance")
def laplacian_variance(images: Tensor, mask: Tensor | None = None) -> Tensor:
    """Sharpness of each image: the variance of its 3 x 3 Laplacian (``[[0, 1, 0], [1, -4, 1],
    [0, 1, 0]]``) over all pixels, borders mirrored without repeating the edge (OpenCV's
    ``cv2.Laplacian(grey, cv2.CV_64F).var()``), or over the pixels of ``mask``.

    Args:
        images: ``[N, 3, H, W]`` RGB (reduced to grey with :data:`GREY_WEIGHTS`) or
            ``[N, 1, H, W]`` grey, in the pixel scale the threshold is meant for (0-255 here);
            H, W >= 2.
        mask: ``[N, H, W]`` bool, the pixels to take the variance over; ``None``: all.

    Returns:
        ``[N]`` float64; NaN for an image whose mask is empty.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, 3, H, W] (RGB) or [N, 1, H, W] (grey), got {got}")
    if min(images.shape[-2:]) < 2:
        raise ValueError(f"images must be at least 2 x 2 pixels, got {tuple(images.shape[-2:])}")
    grey = images.double()
    if grey.shape[1] == 3:
        grey = (grey * grey.new_tensor(GREY_WEIGHTS)[:, None, None]).sum(1, keepdim=True)
    kernel = grey.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    response = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="reflect"), kernel).flatten(1)
    if mask is None:
        return response.var(1, unbiased=False)
    if not isinstance(mask, Tensor) or mask.shape != (images.shape[0], *images.shape[-2:]):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor [N, H, W] = {[images.shape[0], *images.shape[-2:]]}, got {got}")
    weight = mask.flatten(1).double()
    count = weight.sum(1)
    mean = (response * weight).sum(1) / count
    return ((response - mean[:, None]).square() * weight).sum(1) / count


@export("eval.FaceQuality")
@dataclass
class FaceQuality:
    """Quality of N faces (module docstring); every field is ``[N]`` float64."""

    size: Tensor
    yaw: Tensor
    pitch: Tensor
    roll: Tensor
    sharpness: Tensor
    score: Tensor

    def __len__(self) -> int:
        return self.size.numel()

    def to_dicts(self) -> list[dict[str, float | None]]:
        """One ``{field: value}`` per face, NaN as ``None`` (JSON has no NaN)."""
        columns = {f.name: getattr(self, f.name).tolist() for f in fields(self)}
        return [
            {name: None if math.isnan(values[k]) else values[k] for name, values in columns.items()}
            for k in range(len(self))
        ]


@export("eval.face_quality")
def face_quality(
    images: Tensor,
    landmarks: Tensor,
    image_index: Tensor | None = None,
    scores: Tensor | None = None,
    crop_size: int = 112,
) -> FaceQuality:
    """The :class:`FaceQuality` of faces given by their 5 landmarks.

    Args:
        images: ``[B, 3, H, W]`` RGB, 0-255 (uint8 or float).
        landmarks: ``[N, 5, 2]`` (x, y) in ArcFace's order, continuous pixel convention (pixel
            ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``; what the detectors and the synthetic
            datasets give).
        image_index: ``[N]`` image of each face; ``None``: face ``i`` is in image ``i``.
        scores: ``[N]`` detector scores, or ``None``.
        crop_size: side of the aligned crop that sharpness is measured on; keep it fixed for
            thresholds to be comparable (112, ArcFace's).

    Returns:
        The quality record, one entry per face.
    """
    angles = head_pose(landmarks)  # validates landmarks
    count = landmarks.shape[0]
    if scores is not None and (not isinstance(scores, Tensor) or scores.shape != (count,)):
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a tensor [N] = [{count}] of detector scores, got {got}")
    if count == 0:
        return FaceQuality(*(torch.zeros(0, dtype=torch.float64) for _ in fields(FaceQuality)))
    # A fourth channel of ones shows, after the warp, which crop pixels came from inside the image.
    inside = torch.ones_like(images[:, :1], dtype=torch.float32)
    warped, matrices = align_faces(
        torch.cat([images.float(), inside], 1), landmarks.double() - 0.5, crop_size, image_index
    )
    crops, valid = warped[:, :3], warped[:, 3] > 1 - 1e-4
    # Keep pixels whose whole 3 x 3 neighbourhood is inside, in the central 3/4 of the crop.
    valid = -F.max_pool2d(-valid[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0.5
    margin = crop_size // 8
    central = torch.zeros_like(valid)
    central[:, margin : crop_size - margin, margin : crop_size - margin] = True
    # The aligning similarity scales source pixels by s = sqrt(|det A|): the crop covers crop_size / s of them.
    scale = torch.linalg.det(matrices[:, :, :2].double()).abs().sqrt()
    return FaceQuality(
        size=(crop_size / scale).cpu(),
        yaw=angles[:, 0].double().cpu(),
        pitch=angles[:, 1].double().cpu(),
        roll=angles[:, 2].double().cpu(),
        sharpness=laplacian_variance(crops, valid & central).cpu(),
        score=scores.double().cpu() if scores is not None else torch.full((count,), math.nan, dtype=torch.float64),
    )


@export("eval.QualityThresholds")
@dataclass
class QualityThresholds:
    """Which faces are good enough to enrol or identify (0 and ``inf`` switch a test off).

    The fields carry ``help`` metadata so that a task config can take them as its own keys.
    """

    min_face: float = field(default=0.0, metadata={"help": "skip faces smaller than this many pixels (aligned side)"})
    max_yaw: float = field(default=math.inf, metadata={"help": "skip faces turned more than this, radians"})
    min_sharpness: float = field(default=0.0, metadata={"help": "skip faces whose Laplacian variance is lower"})
    min_score: float = field(default=0.0, metadata={"help": "skip faces whose detector score is lower"})

    def __post_init__(self) -> None:
        for name in ("min_face", "max_yaw", "min_sharpness", "min_score"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    def failures(self, quality: FaceQuality) -> list[list[str]]:
        """Per face, the reasons it fails (``[]`` when it passes), e.g. ``"face 18 px < min_face=32"``.

        A face whose pose could not be measured fails ``max_yaw`` when that test is on; a face
        without a detector score is not held to ``min_score``."""
        reasons: list[list[str]] = [[] for _ in range(len(quality))]
        for k in range(len(quality)):
            size, yaw = float(quality.size[k]), float(quality.yaw[k])
            sharpness, score = float(quality.sharpness[k]), float(quality.score[k])
            if size < self.min_face:
                reasons[k].append(f"face {size:.0f} px < min_face={self.min_face:g}")
            if math.isfinite(self.max_yaw) and not abs(yaw) <= self.max_yaw:
                reasons[k].append(f"|yaw| {abs(yaw):.2f} rad > max_yaw={self.max_yaw:g}")
            if sharpness < self.min_sharpness:
                reasons[k].append(f"sharpness {sharpness:.1f} < min_sharpness={self.min_sharpness:g}")
            if not math.isnan(score) and score < self.min_score:
                reasons[k].append(f"score {score:.2f} < min_score={self.min_score:g}")
        return reasons

    def passes(self, quality: FaceQuality) -> Tensor:
        """``[N]`` bool: the faces with no failure."""
        return torch.tensor([not r for r in self.failures(quality)], dtype=torch.bool)
