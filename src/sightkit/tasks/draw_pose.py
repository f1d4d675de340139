"""Pictures of poses: skeletons and keypoints drawn on the image, coloured by body side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from sightkit.tasks.draw import save_picture

# The COCO visualisation convention: the person's left in orange, right in blue, the middle in green.
SIDE_COLORS = {"left": (255, 127, 14), "right": (31, 119, 180), "middle": (44, 160, 44)}


def _side(name: str) -> str:
    return "left" if "left" in name else "right" if "right" in name else "middle"


def plot_poses(
    image: np.ndarray,
    keypoints: np.ndarray,
    skeleton: Sequence[Sequence[int]],
    keypoint_names: Sequence[str],
    boxes: np.ndarray | None = None,
    threshold: float = 0.3,
) -> np.ndarray:
    """Draw poses on a copy of ``image`` (uint8 ``[H, W, 3]`` RGB); returns the new array.

    Args:
        keypoints: ``[N, K, 3]`` image pixels and scores; keypoints scoring below
            ``threshold`` (and limbs touching them) are not drawn.
        skeleton: limbs as 1-based keypoint index pairs (the COCO ``skeleton`` field).
        keypoint_names: the ``K`` names; ``left``/``right`` in a name picks its colour.
        boxes: ``[N, 4]`` ``xyxy`` person boxes to outline, or ``None``.
    """
    picture = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(picture)
    side = max(picture.size)
    width, radius = max(1, side // 200), max(2, side // 150)
    sides = [_side(name) for name in keypoint_names]
    for index, pose in enumerate(np.asarray(keypoints, dtype=np.float64).tolist()):
        if boxes is not None:
            draw.rectangle(np.asarray(boxes[index], dtype=np.float64).tolist(), outline=(200, 200, 200), width=1)
        shown = [score >= threshold for _, _, score in pose]
        for a, b in skeleton:
            i, j = a - 1, b - 1
            if shown[i] and shown[j]:
                color = SIDE_COLORS[sides[i] if sides[i] == sides[j] else "middle"]
                draw.line([tuple(pose[i][:2]), tuple(pose[j][:2])], fill=color, width=width)
        for k, (x, y, _) in enumerate(pose):
            if shown[k]:
                color = SIDE_COLORS[sides[k]]
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color, outline=(255, 255, 255))
    return np.asarray(picture).copy()


def draw_poses(
    image: Tensor,
    keypoints: Tensor,
    skeleton: Sequence[Sequence[int]],
    keypoint_names: Sequence[str],
    path: str | Path,
    boxes: Tensor | None = None,
    threshold: float = 0.3,
) -> Image.Image:
    """:func:`plot_poses` on ``image`` (uint8 ``[3, H, W]``), saved to ``path``; returns the PIL image."""
    array = image.permute(1, 2, 0).cpu().numpy()
    picture = plot_poses(
        array, keypoints.cpu().numpy(), skeleton, keypoint_names, None if boxes is None else boxes.cpu().numpy(),
        threshold,
    )  # fmt: skip
    return save_picture(picture, path)
