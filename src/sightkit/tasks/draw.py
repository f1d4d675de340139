"""Pictures of predictions drawn into uint8 ``[H, W, 3]`` RGB arrays: boxes with labels and
scores, class-map overlays with a legend; :func:`draw_detections` also saves the picture."""

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


def font_for(size: tuple[int, int], fraction: int = 40) -> ImageFont.ImageFont:
    """Pillow's default font scaled to a picture of ``size`` (width, height)."""
    return ImageFont.load_default(size=max(10, max(size) // fraction))


def label_box(
    draw: ImageDraw.ImageDraw,
    box: Sequence[float],
    text: str,
    colour: tuple[int, int, int],
    font: ImageFont.ImageFont,
    width: int,
) -> None:
    """Outline an ``xyxy`` ``box`` and write ``text`` in white on a ``colour`` tag above it
    (inside its top edge when there is no room above)."""
    draw.rectangle(box, outline=colour, width=width)
    if not text:
        return
    left, top, right, bottom = draw.textbbox((box[0], box[1]), text, font=font)
    lift = bottom - top + 2
    y = box[1] - lift if box[1] - lift >= 0 else box[1]
    draw.rectangle((left, y, right + 2, y + lift), fill=colour)
    draw.text((box[0] + 1, y), text, fill=(255, 255, 255), font=font)


def plot_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    texts: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
) -> np.ndarray:
    """Draw ``xyxy`` pixel ``boxes`` ``[N, 4]`` with their ``texts`` in ``colours`` on a copy of
    ``image`` (uint8 ``[H, W, 3]`` RGB); returns the new array."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(picture)
    font, width = font_for(picture.size), max(1, max(picture.size) // 250)
    for box, text, colour in zip(np.asarray(boxes, dtype=np.float64).tolist(), texts, colours, strict=True):
        label_box(draw, box, text, colour, font, width)
    return np.asarray(picture).copy()


def plot_class_map(
    image: np.ndarray, class_map: np.ndarray, names: Sequence[str], alpha: float = 0.5, background: int | None = 0
) -> np.ndarray:
    """Blend a colour per class of ``class_map`` (int ``[H, W]``) over a copy of ``image``
    (uint8 ``[H, W, 3]``), none for the ``background`` class, and write a legend of the
    classes present in the top-left corner. Class ``k`` gets ``PALETTE[k - 1]`` when there
    is a background class 0 (as :func:`sightkit.tasks.segment.overlay_mask` colours it),
    ``PALETTE[k]`` otherwise."""
    pixels = image.astype(np.float32)
    shift = 1 if background == 0 else 0
    colours = np.array([PALETTE[(k - shift) % len(PALETTE)] for k in range(max(len(names), 1))], dtype=np.float32)
    painted = class_map != background if background is not None else np.ones(class_map.shape, dtype=bool)
    painted &= (class_map >= 0) & (class_map < len(colours))
    pixels[painted] = (1 - alpha) * pixels[painted] + alpha * colours[class_map[painted]]
    picture = Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = font_for(picture.size, 30)
    y = 2
    for k in sorted(set(np.unique(class_map[painted]).tolist())):
        name = names[k] if k < len(names) else str(k)
        left, top, right, bottom = draw.textbbox((4, y), name, font=font)
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=tuple(int(c) for c in colours[k]))
        draw.text((4, y), name, fill=(255, 255, 255), font=font)
        y = bottom + 3
    return np.asarray(picture).copy()


def save_picture(picture: np.ndarray, path: str | Path) -> Image.Image:
    """Save a uint8 ``[H, W, 3]`` array (JPEG quality 92); returns it as a PIL image."""
    pil = Image.fromarray(picture)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, quality=92)
    return pil


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
    texts = [f"{name} {score:.2f}" for name, score in zip(names, scores.tolist(), strict=True)]
    array = image.permute(1, 2, 0).cpu().numpy()
    picture = plot_detections(array, boxes.cpu().numpy(), texts, [color_of(name, classes) for name in names])
    return save_picture(picture, path)
