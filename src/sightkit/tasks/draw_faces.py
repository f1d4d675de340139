"""Pictures of face predictions: boxes, the 5 landmarks and a label per face."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

ACCEPTED = (44, 160, 44)
REJECTED = (214, 39, 40)
#: One colour per landmark: eyes, nose, mouth corners.
LANDMARK_COLOURS = ((31, 119, 180), (31, 119, 180), (255, 127, 14), (148, 103, 189), (148, 103, 189))


def draw_faces(
    image: Tensor, boxes: Tensor, landmarks: Tensor, labels: Sequence[str], accepted: Sequence[bool], path: str | Path
) -> Image.Image:
    """Draw ``xyxy`` boxes (green when ``accepted``, red otherwise) with their ``labels`` and
    the ``[K, 5, 2]`` landmarks on ``image`` (uint8 ``[3, H, W]``), save it to ``path``."""
    picture = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy()))
    draw = ImageDraw.Draw(picture)
    side = max(picture.size)
    font = ImageFont.load_default(size=max(10, side // 40))
    width = max(1, side // 250)
    radius = max(1.5, side / 250)
    for box, points, label, ok in zip(boxes.tolist(), landmarks.tolist(), labels, accepted, strict=True):
        colour = ACCEPTED if ok else REJECTED
        draw.rectangle(box, outline=colour, width=width)
        for (x, y), dot in zip(points, LANDMARK_COLOURS, strict=True):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=dot)
        left, top, right, bottom = draw.textbbox((box[0], box[1]), label, font=font)
        lift = bottom - top + 2
        y = box[1] - lift if box[1] - lift >= 0 else box[3]
        draw.rectangle((left, y, right + 2, y + lift), fill=colour)
        draw.text((box[0] + 1, y), label, fill=(255, 255, 255), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, quality=92)
    return picture
