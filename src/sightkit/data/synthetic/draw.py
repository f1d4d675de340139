"""Anti-aliased drawing with exact masks, shared by the synthetic generators.

Shapes are polygons in continuous pixel coordinates (pixel ``(i, j)`` covers
``[j, j+1) x [i, i+1)``). :func:`coverage` rasterises them with Pillow at ``SUPERSAMPLE``
times the resolution and averages each block, which gives the fraction of every pixel the
shape covers: the alpha used to paint it (smooth edges) and, thresholded at 1/2, its mask
(the label). Since both come from the same coverage, the label is exactly what was drawn.
Pillow fills a span of sub-pixels from the floor of one edge crossing to the floor of the
other, both included, which makes each edge sit up to one sub-pixel (1/4 pixel) outside the
exact polygon, half a sub-pixel on average and evenly on all sides (no shift of the centre).
Pillow's polygon fill is the fast path here; numpy only does the block averages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4


@dataclass
class Coverage:
    """Per-pixel coverage in ``[0, 1]`` of a drawn shape, stored for its bounding region only."""

    alpha: np.ndarray  # float32 [h, w]
    top: int
    left: int

    def mask(self, height: int, width: int) -> np.ndarray:
        """The shape's label: bool ``[height, width]``, True where it covers at least half a pixel."""
        full = np.zeros((height, width), dtype=bool)
        h, w = self.alpha.shape
        full[self.top : self.top + h, self.left : self.left + w] = self.alpha >= 0.5
        return full


def polygon_circle(cx: float, cy: float, radius: float) -> np.ndarray:
    """A circle as a polygon ``[M, 2]``, with enough vertices to be round at its size."""
    n = max(16, int(2 * math.pi * radius / 2))
    angles = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def polygon_ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 64) -> np.ndarray:
    """An ellipse with semi-axes ``rx, ry`` rotated by ``angle`` radians, as a polygon ``[n, 2]``."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def polygon_regular(cx: float, cy: float, radius: float, sides: int, angle: float, inner: float = 1.0) -> np.ndarray:
    """A regular polygon (``inner == 1``) or star (``inner < 1``: every other vertex at
    ``inner * radius``) with circumradius ``radius`` and first vertex at ``angle``."""
    count = sides * (2 if inner != 1.0 else 1)
    angles = angle + np.arange(count) * 2 * math.pi / count
    radii = np.where(np.arange(count) % 2 == 1, radius * inner, radius) if inner != 1.0 else np.full(count, radius)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def capsule(p: np.ndarray, q: np.ndarray, radius: float) -> list[np.ndarray]:
    """A thick segment from ``p`` to ``q`` with round ends (a limb), as polygons."""
    d = np.asarray(q, dtype=np.float64) - np.asarray(p, dtype=np.float64)
    length = float(np.hypot(*d))
    normal = np.array([-d[1], d[0]]) / length * radius if length > 0 else np.zeros(2)
    body = np.stack([p + normal, q + normal, q - normal, p - normal])
    return [body, polygon_circle(*p, radius), polygon_circle(*q, radius)]


def coverage(polygons: list[np.ndarray], height: int, width: int, supersample: int = SUPERSAMPLE) -> Coverage:
    """Rasterise the union of ``polygons`` (each ``[M, 2]``, x then y) into a :class:`Coverage`."""
    points = np.concatenate(polygons)
    left, top = max(0, math.floor(points[:, 0].min())), max(0, math.floor(points[:, 1].min()))
    right, bottom = min(width, math.ceil(points[:, 0].max())), min(height, math.ceil(points[:, 1].max()))
    if right <= left or bottom <= top:
        return Coverage(np.zeros((0, 0), dtype=np.float32), 0, 0)
    h, w = bottom - top, right - left
    canvas = Image.new("L", (w * supersample, h * supersample), 0)
    draw = ImageDraw.Draw(canvas)
    offset = np.array([left, top], dtype=np.float64)
    for polygon in polygons:
        scaled = (polygon - offset) * supersample
        draw.polygon(scaled.ravel().tolist(), fill=255)
    blocks = np.asarray(canvas, dtype=np.float32).reshape(h, supersample, w, supersample)
    return Coverage(blocks.mean(axis=(1, 3)) / 255.0, top, left)


def paint(image: np.ndarray, shape: Coverage, color: np.ndarray | tuple[float, float, float]) -> None:
    """Blend ``color`` (RGB, or an ``[H, W, 3]`` array) into float ``image`` ``[H, W, 3]`` in place."""
    h, w = shape.alpha.shape
    if h == 0:
        return
    region = image[shape.top : shape.top + h, shape.left : shape.left + w]
    fill = np.asarray(color, dtype=np.float32)
    if fill.ndim == 3:
        fill = fill[shape.top : shape.top + h, shape.left : shape.left + w]
    alpha = shape.alpha[..., None]
    region *= 1.0 - alpha
    region += alpha * fill


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A float32 ``[H, W, 3]`` background in ``[0, 255]``: smooth colour blobs, stripes or a
    checkerboard at a random angle, and fine grain."""
    base = rng.uniform(30, 225, size=3)
    cells = int(rng.integers(2, 7))
    grid = np.clip(base + rng.normal(0, 40, size=(cells, cells, 3)), 0, 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float32)
    kind = rng.integers(0, 3)
    if kind:
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(6, 40)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        u = (xs * math.cos(theta) + ys * math.sin(theta)) / period
        if kind == 1:
            pattern = np.sin(2 * math.pi * u)
        else:
            v = (-xs * math.sin(theta) + ys * math.cos(theta)) / period
            pattern = np.where((np.floor(u) + np.floor(v)) % 2 == 0, 1.0, -1.0)
        image += rng.uniform(8, 30) * pattern[..., None] * rng.uniform(0.5, 1.0, size=3)
    image += rng.normal(0, rng.uniform(1, 8), size=(height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255)


def distinct_color(rng: np.random.Generator, avoid: np.ndarray, min_distance: float = 80.0) -> np.ndarray:
    """A random whole-number RGB colour at least ``min_distance`` (Euclidean, 0-255 scale) from
    ``avoid`` (so that a shape stands out from its background), after at most 50 draws."""
    color = rng.integers(0, 256, size=3)
    for _ in range(50):
        if np.linalg.norm(color - avoid) >= min_distance:
            break
        color = rng.integers(0, 256, size=3)
    return color.astype(np.float32)
