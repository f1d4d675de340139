"""Pictures of predictions: boxes with labels and scores drawn on the image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

# Tableau's 10 colours: distinct, and readable under white text.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def color_of(name: str, names: Sequence[str] | None = None) -> tuple[int, int, int]:
    """A stable colour per class name (by its index in ``names`` when given)."""
    index = names.index(name) if names is not None and name in names else sum(map(ord, name))
    return PALETTE[index % len(PALETTE)]


def draw_detections(
    image: Tensor,
    boxes: Tensor,
    names: Sequence[str],
    scores: Tensor,
    path: str | Path,
    classes: Sequence[str] | None = None,
) -> Image.Image:
    """Draw ``xyxy`` pixel ``boxes`` with ``"name score"`` labels on ``image`` (uint8
    ``[3, H, W]``) and save it to ``path``; returns the PIL image."""
    picture = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy()))
    draw = ImageDraw.Draw(picture)
    side = max(picture.size)
    font = ImageFont.load_default(size=max(10, side // 40))
    width = max(1, side // 250)
    for box, name, score in zip(boxes.tolist(), names, scores.tolist(), strict=True):
        color = color_of(name, classes)
        draw.rectangle(box, outline=color, width=width)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text, font=font)
        lift = bottom - top + 2
        y = box[1] - lift if box[1] - lift >= 0 else box[1]
        draw.rectangle((left, y, right + 2, y + lift), fill=color)
        draw.text((box[0] + 1, y), text, fill=(255, 255, 255), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, quality=92)
    return picture
