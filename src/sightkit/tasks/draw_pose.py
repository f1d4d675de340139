"""Pictures of poses: skeletons and keypoints drawn on the image, coloured by body side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

# The COCO visualisation convention: the person's left in orange, right in blue, the middle in green.
SIDE_COLORS = {"left": (255, 127, 14), "right": (31, 119, 180), "middle": (44, 160, 44)}


def _side(name: str) -> str:
    return "left" if "left" in name else "right" if "right" in name else "middle"


def draw_poses(
    image: Tensor,
    keypoints: Tensor,
    skeleton: Sequence[Sequence[int]],
    keypoint_names: Sequence[str],
    path: str | Path,
    boxes: Tensor | None = None,
    threshold: float = 0.3,
) -> Image.Image:
    """Draw poses on ``image`` (uint8 ``[3, H, W]``) and save the picture to ``path``.

    Args:
        keypoints: ``[N, K, 3]`` image pixels and scores; keypoints scoring below
            ``threshold`` (and limbs touching them) are not drawn.
        skeleton: limbs as 1-based keypoint index pairs (the COCO ``skeleton`` field).
        keypoint_names: the ``K`` names; ``left``/``right`` in a name picks its colour.
        boxes: ``[N, 4]`` ``xyxy`` person boxes to outline, or ``None``.

    Returns:
        The PIL image (also saved).
    """
    picture = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy()))
    draw = ImageDraw.Draw(picture)
    side = max(picture.size)
    width, radius = max(1, side // 200), max(2, side // 150)
    sides = [_side(name) for name in keypoint_names]
    for index, pose in enumerate(keypoints.tolist()):
        if boxes is not None:
            draw.rectangle(boxes[index].tolist(), outline=(200, 200, 200), width=1)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, quality=92)
    return picture
