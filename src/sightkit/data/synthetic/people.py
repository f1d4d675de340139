"""``people``: articulated figures with COCO's 17 keypoints, for pose estimation.

Each image holds 1 to ``max_people`` figures facing the camera (so the person's left side
is on the image's right, as in COCO), built from a head, neck, torso and two-segment limbs
at random joint angles, sizes and positions, some cut by the image border, and up to
``max_occluders`` objects drawn over them. Keypoints are the joint centres and the face
points (eyes, nose, ears) of the drawing, with COCO's visibility:

- 2: inside the image and not covered by anything drawn later (another figure, an object);
- 1: inside the image but covered;
- 0: outside the image (written as ``0, 0, 0``, COCO's convention).

Each annotation's box and area are those of the figure's visible mask (also written as RLE
``segmentation``). Image ``i`` depends only on ``(seed, i)``.

Layout: see :mod:`sightkit.data.synthetic.writer`; category 1 ``person`` with COCO's
keypoint names and skeleton.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sightkit._api import export
from sightkit.data.coco import COCO_KEYPOINT_NAMES, COCO_SKELETON
from sightkit.data.synthetic.draw import (
    Coverage,
    capsule,
    coverage,
    distinct_color,
    paint,
    polygon_circle,
    polygon_ellipse,
    textured_background,
)
from sightkit.data.synthetic.shapes import image_size
from sightkit.data.synthetic.writer import CocoWriter, check_common, mask_box, mask_to_rle, progress_bar

MIN_VISIBLE = 0.4
MIN_AREA = 100
K = {name: i for i, name in enumerate(COCO_KEYPOINT_NAMES)}


@export("data.PeopleConfig")
@dataclass
class PeopleConfig:
    """Settings of :func:`synthesize_people` (and of ``sightkit data synth people``)."""

    out: str = field(default="runs/data/people", metadata={"help": "output folder"})
    images: int = field(default=200, metadata={"help": "number of images"})
    seed: int = field(default=0, metadata={"help": "random seed; image i depends only on (seed, i)"})
    size: int = field(default=256, metadata={"help": "largest image side; each side is drawn in [0.75, 1] * size"})
    max_people: int = field(default=4, metadata={"help": "at most this many figures per image (at least 1)"})
    max_occluders: int = field(default=2, metadata={"help": "at most this many objects drawn over the figures"})
    val_fraction: float = field(default=0.2, metadata={"help": "fraction of images in annotations/val.json"})
    format: str = field(default="png", metadata={"help": "image format: png or jpg"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass
class Layer:
    """Something painted: its parts (coverage and colour) and its mask (union of the parts)."""

    parts: list[tuple[Coverage, np.ndarray]]
    silhouette: np.ndarray  # bool [H, W]


@dataclass
class DrawnPerson:
    """One figure: keypoints ``[17, 3]`` (x, y, v) as annotated, and its visible mask."""

    keypoints: np.ndarray
    layer: Layer
    mask: np.ndarray  # bool [H, W], the visible part


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


@dataclass
class Figure:
    """A figure's geometry: joint and face points ``[17, 2]``, head centre, lean (radians)
    and height (pixels)."""

    points: np.ndarray
    head: np.ndarray
    lean: float
    scale: float


def pose(rng: np.random.Generator, scale: float, hip: np.ndarray) -> Figure:
    """A random figure ``scale`` pixels tall whose hip centre is at ``hip``."""
    lean = float(rng.normal(0.0, 0.15))
    up = np.array([math.sin(lean), -math.cos(lean)])
    right = np.array([math.cos(lean), math.sin(lean)])  # image-right: the person's left side
    points = np.zeros((17, 2))
    shoulder_centre = hip + up * 0.29 * scale
    r = 0.065 * scale  # head radius
    head = shoulder_centre + up * (0.035 * scale + r)
    turn = right * rng.uniform(-0.25, 0.25) * r
    points[K["nose"]] = head - up * 0.15 * r + turn
    for side, sign in (("left", 1.0), ("right", -1.0)):
        points[K[f"{side}_eye"]] = head + up * 0.2 * r + sign * right * 0.38 * r + turn
        points[K[f"{side}_ear"]] = head + up * 0.05 * r + sign * right * 0.7 * r
        shoulder = shoulder_centre + sign * right * 0.105 * scale
        hip_joint = hip + sign * right * 0.065 * scale
        upper = _rotate(-up, -sign * rng.uniform(-0.3, 2.6))
        lower = _rotate(upper, -sign * rng.uniform(-1.0, 2.2))
        thigh = _rotate(-up, -sign * rng.uniform(-0.15, 0.6))
        shin = _rotate(thigh, -sign * rng.uniform(-0.3, 1.0))
        points[K[f"{side}_shoulder"]] = shoulder
        points[K[f"{side}_elbow"]] = shoulder + upper * 0.16 * scale
        points[K[f"{side}_wrist"]] = points[K[f"{side}_elbow"]] + lower * 0.15 * scale
        points[K[f"{side}_hip"]] = hip_joint
        points[K[f"{side}_knee"]] = hip_joint + thigh * 0.23 * scale
        points[K[f"{side}_ankle"]] = points[K[f"{side}_knee"]] + shin * 0.22 * scale
    return Figure(points, head, lean, scale)


def _person_layer(rng: np.random.Generator, figure: Figure, height: int, width: int) -> Layer:
    skin = np.clip(rng.normal([200, 160, 130], [40, 35, 30]), 30, 255).astype(np.float32)
    shirt = rng.integers(0, 256, size=3).astype(np.float32)
    pants = rng.integers(0, 256, size=3).astype(np.float32)
    points, scale = figure.points, figure.scale
    head_radius, arm, leg = 0.065 * scale, 0.028 * scale, 0.038 * scale

    def limb(a: str, b: str, radius: float) -> list[np.ndarray]:
        return capsule(points[K[a]], points[K[b]], radius)

    corners = [points[K[name]] for name in ("right_shoulder", "left_shoulder", "left_hip", "right_hip")]
    torso = np.stack(corners)
    torso[:, 0] += np.sign(torso[:, 0] - torso[:, 0].mean()) * arm  # as wide as the arms' outer edges
    neck_base = (points[K["left_shoulder"]] + points[K["right_shoulder"]]) / 2
    dot = max(0.7, 0.12 * head_radius)
    ears = [
        polygon_ellipse(*points[K[e]], 0.18 * head_radius, 0.28 * head_radius, figure.lean)
        for e in ("left_ear", "right_ear")
    ]
    pieces = [
        (limb("left_hip", "left_knee", leg) + limb("left_knee", "left_ankle", leg * 0.85), pants),
        (limb("right_hip", "right_knee", leg) + limb("right_knee", "right_ankle", leg * 0.85), pants),
        ([torso], shirt),
        (capsule(neck_base, figure.head, 0.03 * scale), skin),
        ([polygon_circle(*figure.head, head_radius)], skin),
        (ears, skin * 0.85),
        ([polygon_circle(*points[K[e]], dot) for e in ("left_eye", "right_eye")], np.array([30.0, 25.0, 20.0])),
        ([polygon_circle(*points[K["nose"]], dot)], skin * 0.7),
    ]
    for side in ("left", "right"):
        pieces.append((limb(f"{side}_shoulder", f"{side}_elbow", arm), shirt))
        pieces.append((limb(f"{side}_elbow", f"{side}_wrist", arm * 0.85), skin))
    parts = [(coverage(polygons, height, width), color.astype(np.float32)) for polygons, color in pieces]
    silhouette = np.zeros((height, width), dtype=bool)
    for part, _ in parts:
        silhouette |= part.mask(height, width)
    return Layer(parts, silhouette)


def _occluder(rng: np.random.Generator, background: np.ndarray, height: int, width: int) -> Layer:
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    rx, ry = rng.uniform(0.05, 0.18) * width, rng.uniform(0.05, 0.18) * height
    angle = rng.uniform(0, math.pi)
    if rng.random() < 0.5:
        polygon = polygon_ellipse(cx, cy, rx, ry, angle)
    else:
        polygon = polygon_ellipse(cx, cy, rx, ry, angle, n=4)  # a rotated rhombus-like box
    part = coverage([polygon], height, width)
    mask = part.mask(height, width)
    avoid = background[mask].mean(axis=0) if mask.any() else background.mean(axis=(0, 1))
    return Layer([(part, distinct_color(rng, avoid))], mask)


def _hides_too_much(layers: list[Layer], visible: list[np.ndarray], mask: np.ndarray) -> bool:
    return any(
        (v & ~mask).sum() < MIN_VISIBLE * layer.silhouette.sum() for layer, v in zip(layers, visible, strict=True)
    )


def render_people(
    rng: np.random.Generator, height: int, width: int, max_people: int, max_occluders: int
) -> tuple[np.ndarray, list[DrawnPerson]]:
    """Draw one image: uint8 ``[H, W, 3]`` and its figures with annotated keypoints."""
    background = textured_background(rng, height, width)
    people: list[Layer] = []
    joints: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, max_people + 1))):
        for _attempt in range(20):
            scale = rng.uniform(0.4, 0.9) * height
            hip = np.array([rng.uniform(0.05, 0.95) * width, rng.uniform(0.35 * scale, height)])
            figure = pose(rng, scale, hip)
            layer = _person_layer(rng, figure, height, width)
            if layer.silhouette.sum() >= MIN_AREA and not _hides_too_much(people, visible, layer.silhouette):
                break
        else:
            continue
        visible = [v & ~layer.silhouette for v in visible]
        people.append(layer)
        joints.append(figure.points)
        visible.append(layer.silhouette.copy())
    occluders: list[Layer] = []
    for _ in range(int(rng.integers(0, max_occluders + 1))):
        layer = _occluder(rng, background, height, width)
        if layer.silhouette.any() and not _hides_too_much(people, visible, layer.silhouette):
            visible = [v & ~layer.silhouette for v in visible]
            occluders.append(layer)
    image = background
    for layer in [*people, *occluders]:
        for part, color in layer.parts:
            paint(image, part, color)
    layers = [*people, *occluders]
    drawn = []
    for index, (points, mask) in enumerate(zip(joints, visible, strict=True)):
        covering = np.zeros((height, width), dtype=bool)
        for later in layers[index + 1 :]:
            covering |= later.silhouette
        drawn.append(DrawnPerson(_annotate(points, covering), people[index], mask))
    return np.rint(image).astype(np.uint8), drawn


def _annotate(points: np.ndarray, covering: np.ndarray) -> np.ndarray:
    """Keypoints ``[17, 3]`` with COCO visibility (module docstring); coordinates as float32
    values so that what is written to JSON is exactly what a reader gets back."""
    height, width = covering.shape
    out = np.zeros((len(points), 3), dtype=np.float64)
    for k, (x, y) in enumerate(points.astype(np.float32).astype(np.float64)):
        if 0 <= x < width and 0 <= y < height:
            out[k] = (x, y, 1 if covering[int(y), int(x)] else 2)
    return out


@export("data.synthesize_people")
def synthesize_people(config: PeopleConfig | None = None, **overrides: Any) -> dict[str, Path]:
    """Write the ``people`` dataset (module docstring) and return the paths of the
    ``train``/``val`` JSON files and the ``images`` folder.

    ``overrides`` replace fields of ``config``: ``synthesize_people(out="data", images=50)``.
    """
    config = dataclasses.replace(config or PeopleConfig(), **overrides)
    check_common(config.images, config.val_fraction, config.format)
    if config.max_people < 1 or config.max_occluders < 0 or config.size < 64:
        raise ValueError(
            f"need max_people >= 1, max_occluders >= 0 and size >= 64, got {config.max_people}, "
            f"{config.max_occluders} and {config.size}"
        )
    categories = [
        {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(COCO_KEYPOINT_NAMES),
            "skeleton": [list(pair) for pair in COCO_SKELETON],
        }
    ]
    writer = CocoWriter(config.out, categories, config.images, config.val_fraction, "sightkit synthetic people")
    with progress_bar("people", config.images, config.progress) as advance:
        for index in range(config.images):
            rng = np.random.default_rng([config.seed, index])
            height, width = image_size(rng, config.size)
            image, people = render_people(rng, height, width, config.max_people, config.max_occluders)
            annotations = [
                {
                    "category_id": 1,
                    "bbox": mask_box(p.mask),
                    "area": float(p.mask.sum()),
                    "segmentation": mask_to_rle(p.mask),
                    "iscrowd": 0,
                    "keypoints": [float(v) for v in p.keypoints.ravel()],
                    "num_keypoints": int((p.keypoints[:, 2] > 0).sum()),
                }
                for p in people
                if p.mask.any()
            ]
            writer.add(index, image, annotations, config.format)
            advance()
    return {**writer.close(), "images": writer.image_dir}
