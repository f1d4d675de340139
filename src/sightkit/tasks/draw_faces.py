"""Pictures of face predictions: boxes, the 5 landmarks and a label per face."""

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
    image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray, labels: Sequence[str], accepted: Sequence[bool]
) -> np.ndarray:
    """Draw ``xyxy`` boxes (green when ``accepted``, red otherwise) with their ``labels`` and
    the ``[N, 5, 2]`` landmarks on a copy of ``image`` (uint8 ``[H, W, 3]`` RGB)."""
    picture = Image.fromarray(plot_landmarks(image, landmarks))
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
    image: Tensor, boxes: Tensor, landmarks: Tensor, labels: Sequence[str], accepted: Sequence[bool], path: str | Path
) -> Image.Image:
    """:func:`plot_faces` on ``image`` (uint8 ``[3, H, W]``), saved to ``path``; returns the PIL image."""
    array = image.permute(1, 2, 0).cpu().numpy()
    return save_picture(plot_faces(array, boxes.cpu().numpy(), landmarks.cpu().numpy(), labels, accepted), path)
