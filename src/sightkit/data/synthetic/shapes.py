"""``shapes``: filled shapes of several classes on textured backgrounds, for detection and
instance/semantic segmentation.

Each image holds ``min_objects`` to ``max_objects`` shapes (circle, square, triangle, star,
hexagon; the first ``classes`` of them) of random size (circumradius ``min_radius`` to
``max_radius`` times the shorter image side), rotation and flat colour, painted in order so
that later shapes hide parts of earlier ones (a placement that would hide more than 60% of an
earlier shape is drawn again). The labels are the *visible* parts: each instance's mask is what remains of it
after the shapes painted over it, its box is the tight box of that mask, and the semantic
mask ``OUT/masks/NNNNNN.png`` holds the category id of the shape seen at each pixel (0 for
background). Image ``i`` depends only on ``(seed, i)``.

Layout: see :mod:`sightkit.data.synthetic.writer`; categories 1..``classes`` in :data:`SHAPE_CLASSES` order.

The defaults make a dataset that a detector needs hours of CPU training to learn well (five
classes, small shapes on striped or checkered backgrounds). A detector learns an easier one in
minutes, as ``sightkit demo`` does; for instance::

    sightkit data synth shapes out=runs/data/shapes_easy images=800 size=96 classes=3 \
        max_objects=3 min_radius=0.15 max_radius=0.3
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sightkit._api import export
from sightkit.data.synthetic.draw import (
    Coverage,
    coverage,
    distinct_color,
    paint,
    polygon_circle,
    polygon_regular,
    textured_background,
)
from sightkit.data.synthetic.writer import CocoWriter, check_common, mask_box, mask_to_rle, progress_bar, save_image

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "hexagon")
MIN_VISIBLE = 0.4  # fraction of a shape that must stay visible when others are painted over it
MIN_AREA = 30  # pixels
BACKGROUNDS = ("textured", "plain")


@export("data.ShapesConfig")
@dataclass
class ShapesConfig:
    """Settings of :func:`synthesize_shapes` (and of ``sightkit data synth shapes``)."""

    out: str = field(default="runs/data/shapes", metadata={"help": "output folder"})
    images: int = field(default=200, metadata={"help": "number of images"})
    seed: int = field(default=0, metadata={"help": "random seed; image i depends only on (seed, i)"})
    size: int = field(default=256, metadata={"help": "largest image side; each side is drawn in [0.75, 1] * size"})
    max_objects: int = field(default=6, metadata={"help": "at most this many shapes per image (at least 1)"})
    min_objects: int = field(default=1, metadata={"help": "at least this many shapes per image are tried"})
    classes: int = field(default=5, metadata={"help": f"shape classes used, the first of {', '.join(SHAPE_CLASSES)}"})
    min_radius: float = field(default=0.06, metadata={"help": "smallest circumradius, times the shorter image side"})
    max_radius: float = field(default=0.22, metadata={"help": "largest circumradius, times the shorter image side"})
    background: str = field(default="textured", metadata={"help": "textured (blobs, stripes, checks) or plain"})
    val_fraction: float = field(default=0.2, metadata={"help": "fraction of images in annotations/val.json"})
    format: str = field(default="png", metadata={"help": "image format: png or jpg"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass
class DrawnShape:
    """One shape as drawn: class, geometry (pixels, radians), colour and visible mask."""

    label: int
    center: tuple[float, float]
    radius: float
    angle: float
    color: np.ndarray
    coverage: Coverage
    mask: np.ndarray  # bool [H, W], the visible part


def shape_polygon(label: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """The outline of class ``SHAPE_CLASSES[label]`` with circumradius ``radius``."""
    name = SHAPE_CLASSES[label]
    if name == "circle":
        return polygon_circle(cx, cy, radius)
    if name == "star":
        return polygon_regular(cx, cy, radius, 5, angle, inner=0.45)
    sides = {"square": 4, "triangle": 3, "hexagon": 6}[name]
    return polygon_regular(cx, cy, radius, sides, angle)


def render_shapes(
    rng: np.random.Generator,
    height: int,
    width: int,
    max_objects: int,
    *,
    min_objects: int = 1,
    classes: int = len(SHAPE_CLASSES),
    radius: tuple[float, float] = (0.06, 0.22),
    background: str = "textured",
) -> tuple[np.ndarray, list[DrawnShape]]:
    """Draw one image: uint8 ``[H, W, 3]`` and its shapes in painting order.

    ``radius`` is the range of circumradii as fractions of the shorter side; the other
    arguments are :class:`ShapesConfig`'s. A placement that fails 20 times is skipped, so an
    image may hold fewer than ``min_objects`` shapes when they are large.
    """
    image = (
        textured_background(rng, height, width) if background == "textured" else plain_background(rng, height, width)
    )
    shapes: list[DrawnShape] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for _attempt in range(20):
            label = int(rng.integers(classes))
            radius_px = float(rng.uniform(*radius) * min(height, width))
            cx = float(rng.uniform(0.25 * radius_px, width - 0.25 * radius_px))
            cy = float(rng.uniform(0.25 * radius_px, height - 0.25 * radius_px))
            angle = float(rng.uniform(0, 2 * math.pi))
            drawn = coverage([shape_polygon(label, cx, cy, radius_px, angle)], height, width)
            mask = drawn.mask(height, width)
            if mask.sum() < MIN_AREA:
                continue
            if all((s.mask & ~mask).sum() >= MIN_VISIBLE * s.coverage.mask(height, width).sum() for s in shapes):
                break
        else:
            continue
        for s in shapes:
            s.mask &= ~mask
        color = distinct_color(rng, image[mask].mean(axis=0))
        shapes.append(DrawnShape(label, (cx, cy), radius_px, angle, color, drawn, mask))
    for s in shapes:
        paint(image, s.coverage, s.color)
    return np.rint(image).astype(np.uint8), shapes


def plain_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A float32 ``[H, W, 3]`` background in ``[0, 255]``: one flat colour with fine grain."""
    image = np.broadcast_to(rng.uniform(30, 225, size=3).astype(np.float32), (height, width, 3))
    return np.clip(image + rng.normal(0, 3, size=(height, width, 1)).astype(np.float32), 0, 255)


def semantic_mask(shapes: list[DrawnShape], height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W]``: the category id (label + 1) of the visible shape at each pixel, 0 elsewhere."""
    semantic = np.zeros((height, width), dtype=np.uint8)
    for s in shapes:
        semantic[s.mask] = s.label + 1
    return semantic


def image_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    low = max(8, round(0.75 * size))
    return int(rng.integers(low, size + 1)), int(rng.integers(low, size + 1))


@export("data.synthesize_shapes")
def synthesize_shapes(config: ShapesConfig | None = None, **overrides: Any) -> dict[str, Path]:
    """Write the ``shapes`` dataset (module docstring) and return the paths of
    ``train``/``val`` JSON files, ``images`` and ``masks`` folders.

    ``overrides`` replace fields of ``config``: ``synthesize_shapes(out="data", images=50)``.
    """
    config = dataclasses.replace(config or ShapesConfig(), **overrides)
    check_common(config.images, config.val_fraction, config.format)
    check_shapes_config(config)
    names = SHAPE_CLASSES[: config.classes]
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(names)]
    writer = CocoWriter(config.out, categories, config.images, config.val_fraction, "sightkit synthetic shapes")
    mask_dir = Path(config.out) / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar("shapes", config.images, config.progress) as advance:
        for index in range(config.images):
            rng = np.random.default_rng([config.seed, index])
            height, width = image_size(rng, config.size)
            image, shapes = render_shapes(
                rng,
                height,
                width,
                config.max_objects,
                min_objects=config.min_objects,
                classes=config.classes,
                radius=(config.min_radius, config.max_radius),
                background=config.background,
            )
            annotations = [
                {
                    "category_id": s.label + 1,
                    "bbox": mask_box(s.mask),
                    "area": float(s.mask.sum()),
                    "segmentation": mask_to_rle(s.mask),
                    "iscrowd": 0,
                }
                for s in shapes
                if s.mask.any()
            ]
            file_name = writer.add(index, image, annotations, config.format)
            save_image(semantic_mask(shapes, height, width), mask_dir / (Path(file_name).stem + ".png"))
            advance()
    return {**writer.close(), "images": writer.image_dir, "masks": mask_dir}


def check_shapes_config(config: ShapesConfig) -> None:
    """Raise ``ValueError`` naming the first setting of ``config`` that cannot make a dataset."""
    if config.size < 16:
        raise ValueError(f"size must be >= 16, got {config.size}")
    if not 1 <= config.min_objects <= config.max_objects:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects, got min_objects={config.min_objects}, "
            f"max_objects={config.max_objects}"
        )
    if not 1 <= config.classes <= len(SHAPE_CLASSES):
        raise ValueError(f"classes must be in 1..{len(SHAPE_CLASSES)}, got {config.classes}")
    if not 0 < config.min_radius <= config.max_radius <= 0.5:
        raise ValueError(
            f"need 0 < min_radius <= max_radius <= 0.5 (fractions of the shorter side), got "
            f"min_radius={config.min_radius}, max_radius={config.max_radius}"
        )
    if config.background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {config.background!r}")
