"""Pictures of face predictions: boxes, the 5 landmarks, the head pose and a label per face."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from sightkit.tasks.draw import font_for, save_picture

ACCEPTED = (44, 160, 44)
REJECTED = (214, 39, 40)
#: One colour per landmark: eyes, nose, mouth corners.
LANDMARK_COLOURS = ((31, 119, 180), (31, 119, 180), (255, 127, 14), (148, 103, 189), (148, 103, 189))
#: Head-pose axes: the face's x (red; to the image's right when frontal), y (green; down), z (blue; towards
#: the camera).
AXIS_COLOURS = ((214, 39, 40), (44, 160, 44), (31, 119, 180))


def head_pose_axes(landmarks: np.ndarray, angles: np.ndarray, length: float = 0.6) -> np.ndarray:
    """``[N, 3, 2]`` image points where the head's x, y and z axes end, drawn from the nose tip:
    the columns of ``R = Rz(roll) Ry(yaw) Rx(pitch)`` (:mod:`sightkit.ops.head_pose`) projected
    orthographically, ``length`` eye-to-mouth distances long. ``angles`` ``[N, 3]`` (yaw, pitch,
    roll), radians; ``landmarks`` ``[N, 5, 2]``."""
    import torch

    from sightkit.ops.head_pose import rotation_from_euler

    points = np.asarray(landmarks, dtype=np.float64)
    rotation = rotation_from_euler(torch.from_numpy(np.asarray(angles, dtype=np.float64))).numpy()
    eyes, mouth = points[:, :2].mean(1), points[:, 3:].mean(1)
    scale = length * np.linalg.norm(mouth - eyes, axis=1)
    # Column k of R is where the face's axis k points; its (x, y) is what the image shows of it.
    return points[:, 2, None, :] + scale[:, None, None] * rotation[:, :2, :].transpose(0, 2, 1)


def plot_head_pose(image: np.ndarray, landmarks: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Short x, y, z axes (red, green, blue) from each face's nose tip (:func:`head_pose_axes`) on a
    copy of ``image`` (uint8 ``[H, W, 3]``); faces whose pose is NaN are left out."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(picture)
    width = max(1, max(picture.size) // 300)
    angles = np.asarray(angles, dtype=np.float64)
    finite = np.isfinite(angles).all(1)
    if finite.any():
        ends = head_pose_axes(np.asarray(landmarks)[finite], angles[finite])
        for nose, axes in zip(
            np.asarray(landmarks, dtype=np.float64)[finite][:, 2].tolist(), ends.tolist(), strict=True
        ):
            # z last: the axis out of the face is drawn over the others.
            for end, colour in zip(axes, AXIS_COLOURS, strict=True):
                draw.line((*nose, *end), fill=colour, width=width)
    return np.asarray(picture).copy()


def plot_landmarks(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Dots for ``[N, 5, 2]`` pixel landmarks (eyes, nose, mouth corners) on a copy of ``image``
    (uint8 ``[H, W, 3]``)."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(picture)
    radius = max(1.5, max(picture.size) / 250)
    for points in np.asarray(landmarks, dtype=np.float64).tolist():
        for (x, y), dot in zip(points, LANDMARK_COLOURS, strict=True):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=dot)
    return np.asarray(picture).copy()


def plot_faces(
    image: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    labels: Sequence[str],
    accepted: Sequence[bool],
    poses: np.ndarray | None = None,
) -> np.ndarray:
    """Draw ``xyxy`` boxes (green when ``accepted``, red otherwise) with their ``labels``, the
    ``[N, 5, 2]`` landmarks and, given ``poses`` ``[N, 3]`` (yaw, pitch, roll), the head-pose axes
    on a copy of ``image`` (uint8 ``[H, W, 3]`` RGB)."""
    picture = plot_landmarks(image, landmarks)
    if poses is not None:
        picture = plot_head_pose(picture, landmarks, poses)
    picture = Image.fromarray(picture)
    draw = ImageDraw.Draw(picture)
    font, width = font_for(picture.size), max(1, max(picture.size) // 250)
    for box, label, ok in zip(np.asarray(boxes, dtype=np.float64).tolist(), labels, accepted, strict=True):
        colour = ACCEPTED if ok else REJECTED
        draw.rectangle(box, outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((box[0], box[1]), label, font=font)
        lift = bottom - top + 2
        y = box[1] - lift if box[1] - lift >= 0 else box[3]
        draw.rectangle((left, y, right + 2, y + lift), fill=colour)
        draw.text((box[0] + 1, y), label, fill=(255, 255, 255), font=font)
    return np.asarray(picture).copy()


def draw_faces(
    image: Tensor,
    boxes: Tensor,
    landmarks: Tensor,
    labels: Sequence[str],
    accepted: Sequence[bool],
    path: str | Path,
    poses: Tensor | None = None,
) -> Image.Image:
    """:func:`plot_faces` on ``image`` (uint8 ``[3, H, W]``), saved to ``path``; returns the PIL image."""
    array = image.permute(1, 2, 0).cpu().numpy()
    angles = poses.cpu().numpy() if poses is not None else None
    picture = plot_faces(array, boxes.cpu().numpy(), landmarks.cpu().numpy(), labels, accepted, angles)
    return save_picture(picture, path)
