"""``faces``: procedurally drawn face identities, for face detection and recognition.

An identity is a fixed set of shapes and colours: face proportions, skin, hair colour and
hairline, eye spacing, size and colour, eyebrows, nose length and width, mouth width, lip
thickness and smile. A render of an identity varies the pose (roll; yaw and pitch, drawn by
placing every point on an ellipsoid and turning it, then projecting orthographically), the
scale and position, the lighting (gain, direction, tint) and the background; a recognition
crop may also wear an occluder (sunglasses or a face mask, drawn on the same ellipsoid).
The 5 landmarks are the eye centres, the nose tip and the mouth corners, in ArcFace's order
(image-left eye first, see :data:`sightkit.data.FACE_LANDMARK_NAMES`).

Written layout (``OUT/``)::

    images/, annotations/{train,val}.json   scenes with 1..max_faces faces: COCO JSON, category 1
                                            "face" with the 5 landmarks as keypoints (visibility 2);
                                            box = tight box of the head (face and hair) mask
    recognition/train/NAME/NAME_0001.png    per-identity crops (crop x crop) of `identities` identities,
                                            readable with torchvision's ImageFolder
    recognition/test/NAME/NAME_0001.png     `test_identities` other identities, LFW's layout
    recognition/pairs.txt                   LFW's pairs format over recognition/test: a line
                                            "folds<TAB>n", then per fold n "NAME i j" (same person)
                                            and n "NAME1 i NAME2 j" (different people) lines,
                                            identities split between folds as in LFW
    recognition/landmarks.json              {"train/NAME/NAME_0001.png": [[x, y] x 5], ...}
    recognition/poses.json                  {"train/NAME/NAME_0001.png": {"yaw": .., "pitch": .., "roll": ..,
                                            "occluder": "" | "sunglasses" | "mask"}, ...}, radians, in the
                                            convention of :class:`FacePose`

Scene ``i`` depends only on ``(seed, i)``, identity ``k`` only on ``(seed, k)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sightkit._api import export
from sightkit.data.coco import FACE_LANDMARK_NAMES
from sightkit.data.synthetic.draw import Coverage, coverage, paint, polygon_circle, polygon_ellipse, textured_background
from sightkit.data.synthetic.shapes import image_size
from sightkit.data.synthetic.writer import (
    CocoWriter,
    check_common,
    mask_box,
    progress_bar,
    save_image,
)

DEPTH = 0.7  # ellipsoid depth of the face relative to its half-width
NOSE_DEPTH = 0.35  # how far the nose tip stands out of the ellipsoid


@export("data.FacesConfig")
@dataclass
class FacesConfig:
    """Settings of :func:`synthesize_faces` (and of ``sightkit data synth faces``)."""

    out: str = field(default="runs/data/faces", metadata={"help": "output folder"})
    images: int = field(default=200, metadata={"help": "number of detection scenes"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    size: int = field(default=256, metadata={"help": "largest scene side; each side is drawn in [0.75, 1] * size"})
    max_faces: int = field(default=4, metadata={"help": "at most this many faces per scene (at least 1)"})
    identities: int = field(default=50, metadata={"help": "identities in recognition/train"})
    test_identities: int = field(default=20, metadata={"help": "other identities in recognition/test (pairs.txt)"})
    per_identity: int = field(default=10, metadata={"help": "crops per identity"})
    crop: int = field(default=112, metadata={"help": "side of the recognition crops in pixels"})
    max_yaw: float = field(default=0.45, metadata={"help": "recognition crops: yaw drawn in [-max_yaw, max_yaw], rad"})
    max_pitch: float = field(default=0.0, metadata={"help": "recognition crops: pitch in [-max_pitch, max_pitch], rad"})
    occluders: float = field(
        default=0.0, metadata={"help": "recognition crops: probability of sunglasses or a mask (half each)"}
    )
    folds: int = field(default=10, metadata={"help": "folds in pairs.txt"})
    pairs_per_fold: int = field(default=20, metadata={"help": "same-person pairs and different-person pairs per fold"})
    val_fraction: float = field(default=0.2, metadata={"help": "fraction of scenes in annotations/val.json"})
    format: str = field(default="png", metadata={"help": "image format: png or jpg"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass(frozen=True)
class FaceIdentity:
    """The fixed geometry and colours of one identity, in face units: the face ellipse has
    half-width 1 and half-height ``aspect``, y grows downwards, the centre is the origin."""

    aspect: float
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    hairline: float
    fringe: float
    eye_dx: float
    eye_y: float
    eye_rx: float
    eye_ry: float
    brow_gap: float
    brow_tilt: float
    brow_thickness: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip: float
    smile: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> FaceIdentity:
        aspect = rng.uniform(1.15, 1.45)
        return cls(
            aspect=aspect,
            skin=np.clip(rng.normal([195, 150, 120], [45, 40, 35]), 40, 250),
            hair=rng.uniform(10, 200, size=3) * rng.uniform(0.3, 1.0),
            iris=rng.uniform(20, 180, size=3),
            lips=np.clip(rng.normal([170, 80, 80], 25), 30, 250),
            hairline=-rng.uniform(0.5, 0.75) * aspect,
            fringe=rng.uniform(0.0, 0.3),
            eye_dx=rng.uniform(0.32, 0.46),
            eye_y=-rng.uniform(0.08, 0.3) * aspect,
            eye_rx=rng.uniform(0.12, 0.18),
            eye_ry=rng.uniform(0.06, 0.09),
            brow_gap=rng.uniform(0.12, 0.22),
            brow_tilt=rng.uniform(-0.06, 0.06),
            brow_thickness=rng.uniform(0.03, 0.07),
            nose_y=rng.uniform(0.1, 0.3) * aspect,
            nose_w=rng.uniform(0.08, 0.16),
            mouth_y=rng.uniform(0.45, 0.62) * aspect,
            mouth_w=rng.uniform(0.28, 0.45),
            lip=rng.uniform(0.04, 0.09),
            smile=rng.uniform(-0.04, 0.1),
        )


@dataclass(frozen=True)
class FacePose:
    """Where and how a face is drawn: centre (pixels), half-width (pixels), roll, yaw and pitch
    (radians).

    Face units have x to the image's right, y down and z out of the face towards the camera
    (the nose tip has the largest z). A point ``X`` is drawn at ``half_width * (R X)[:2]`` from
    the centre with ``R = Rz(roll) Ry(yaw) Rx(pitch)``: positive yaw turns the nose towards the
    image's right, positive pitch tilts it down (chin towards the chest), positive roll turns the
    face clockwise in the image (y is down). :func:`sightkit.ops.head_pose` uses the same angles.
    """

    cx: float
    cy: float
    half_width: float
    roll: float
    yaw: float
    pitch: float = 0.0


def _project(identity: FaceIdentity, pose: FacePose, points: np.ndarray, lift: float = 0.0) -> np.ndarray:
    """Face-unit points ``[M, 2]`` on the face ellipsoid (raised by ``lift``) -> image pixels."""
    x, y = points[:, 0], points[:, 1]
    z = DEPTH * np.sqrt(np.clip(1.0 - x**2 - (y / identity.aspect) ** 2, 0.0, None)) + lift
    cp, sp = math.cos(pose.pitch), math.sin(pose.pitch)
    y, z = cp * y + sp * z, cp * z - sp * y
    turned = x * math.cos(pose.yaw) + z * math.sin(pose.yaw)
    c, s = math.cos(pose.roll), math.sin(pose.roll)
    return np.stack(
        [pose.cx + pose.half_width * (c * turned - s * y), pose.cy + pose.half_width * (s * turned + c * y)], axis=1
    )


def landmarks_3d(identity: FaceIdentity) -> np.ndarray:
    """The 5 landmarks ``[5, 3]`` in face units on the ellipsoid (x right, y down, z towards the
    camera), ArcFace order: what :func:`landmarks` turns and projects."""
    i = identity
    points = np.array(
        [[-i.eye_dx, i.eye_y], [i.eye_dx, i.eye_y], [0.0, i.nose_y], [-i.mouth_w, i.mouth_y], [i.mouth_w, i.mouth_y]]
    )
    z = DEPTH * np.sqrt(np.clip(1.0 - points[:, 0] ** 2 - (points[:, 1] / i.aspect) ** 2, 0.0, None))
    z[2] += NOSE_DEPTH
    return np.concatenate([points, z[:, None]], axis=1)


def landmarks(identity: FaceIdentity, pose: FacePose) -> np.ndarray:
    """The 5 landmarks ``[5, 2]`` in pixels, ArcFace order."""
    i = identity
    eyes = _project(i, pose, np.array([[-i.eye_dx, i.eye_y], [i.eye_dx, i.eye_y]]))
    nose = _project(i, pose, np.array([[0.0, i.nose_y]]), lift=NOSE_DEPTH)
    mouth = _project(i, pose, np.array([[-i.mouth_w, i.mouth_y], [i.mouth_w, i.mouth_y]]))
    return np.concatenate([eyes, nose, mouth])


def face_parts(
    identity: FaceIdentity, pose: FacePose, height: int, width: int
) -> tuple[list[tuple[Coverage, np.ndarray]], np.ndarray]:
    """The painted parts (coverage, colour) of one face in order, and its head mask (face
    and hair), bool ``[H, W]``."""
    i = identity

    def shape(points: np.ndarray, lift: float = 0.0) -> Coverage:
        return coverage([_project(i, pose, points, lift)], height, width)

    face = shape(polygon_ellipse(0.0, 0.0, 1.0, i.aspect, n=96))
    # Hair: the part of a slightly larger ellipse above the hairline, which dips by `fringe` in the middle.
    outer_a, outer_b = 1.08, 1.06 * i.aspect
    x_edge = outer_a * math.sqrt(max(0.0, 1.0 - (i.hairline / outer_b) ** 2))
    t = np.linspace(
        math.atan2(i.hairline / outer_b, -x_edge / outer_a), math.atan2(i.hairline / outer_b, x_edge / outer_a), 48
    )
    arc = np.stack([outer_a * np.cos(t), outer_b * np.sin(t)], axis=1)
    xs = np.linspace(x_edge, -x_edge, 24)
    hairline = np.stack([xs, i.hairline + i.fringe * i.aspect * (1 - (xs / x_edge) ** 2)], axis=1)
    hair = shape(np.concatenate([arc, hairline]))
    parts: list[tuple[Coverage, np.ndarray]] = [(face, i.skin), (hair, i.hair)]
    for sign in (-1.0, 1.0):
        ex = sign * i.eye_dx
        brow_y = i.eye_y - i.eye_ry - i.brow_gap
        brow = np.array(
            [
                [ex - i.eye_rx, brow_y + sign * i.brow_tilt],
                [ex + i.eye_rx, brow_y - sign * i.brow_tilt],
                [ex + i.eye_rx, brow_y - sign * i.brow_tilt + i.brow_thickness],
                [ex - i.eye_rx, brow_y + sign * i.brow_tilt + i.brow_thickness],
            ]
        )
        parts.append((shape(brow), i.hair * 0.8))
        parts.append((shape(polygon_ellipse(ex, i.eye_y, i.eye_rx, i.eye_ry, n=32)), np.array([240.0, 240.0, 235.0])))
        parts.append((shape(polygon_circle(ex, i.eye_y, 0.85 * i.eye_ry)), i.iris))
        parts.append((shape(polygon_circle(ex, i.eye_y, 0.4 * i.eye_ry)), np.array([15.0, 15.0, 15.0])))
    bridge = i.eye_y + 0.08
    nose = np.array([[0.0, bridge], [i.nose_w, i.nose_y], [0.0, i.nose_y + 0.05], [-i.nose_w, i.nose_y]])
    # The nose rises from the face (lift 0 at the bridge) to NOSE_DEPTH at its tip.
    nose_pixels = np.concatenate([_project(i, pose, nose[:1]), _project(i, pose, nose[1:], lift=NOSE_DEPTH)])
    parts.append((coverage([nose_pixels], height, width), i.skin * 0.78))
    xs = np.linspace(-i.mouth_w, i.mouth_w, 24)
    bulge = 1 - (xs / i.mouth_w) ** 2
    middle = i.mouth_y + i.smile * bulge
    mouth = np.concatenate(
        [
            np.stack([xs, middle - i.lip * np.sqrt(bulge)], 1),
            np.stack([xs[::-1], (middle + 1.3 * i.lip * np.sqrt(bulge))[::-1]], 1),
        ]
    )
    parts.append((shape(mouth), i.lips))
    head = face.mask(height, width) | hair.mask(height, width)
    return parts, head


#: The occluders a recognition crop may wear.
OCCLUDERS = ("sunglasses", "mask")


def occluder_parts(
    identity: FaceIdentity, pose: FacePose, kind: str, height: int, width: int
) -> list[tuple[Coverage, np.ndarray]]:
    """The painted parts of an occluder worn by the face: ``sunglasses`` (two dark lenses over the
    eyes and a bridge) or ``mask`` (a light-blue cloth from the nose bridge to the chin)."""
    i = identity

    def shape(points: np.ndarray, lift: float) -> Coverage:
        return coverage([_project(i, pose, points, lift)], height, width)

    if kind == "sunglasses":
        lens_rx, lens_ry = 1.5 * i.eye_rx, 2.6 * i.eye_ry
        lenses = [shape(polygon_ellipse(sign * i.eye_dx, i.eye_y, lens_rx, lens_ry, n=32), 0.03) for sign in (-1, 1)]
        inner = i.eye_dx - lens_rx
        bridge = np.array([[-inner, i.eye_y - 0.03], [inner, i.eye_y - 0.03], [inner, i.eye_y], [-inner, i.eye_y]])
        dark = np.array([25.0, 25.0, 30.0])
        return [*((lens, dark) for lens in lenses), (shape(bridge, 0.03), dark)]
    if kind == "mask":
        # The part of the face ellipse below a line just under the eyes, lifted over the nose.
        top = i.eye_y + i.eye_ry + 0.12
        x_edge = math.sqrt(max(0.0, 1.0 - (top / i.aspect) ** 2))
        start = math.asin(min(1.0, max(-1.0, top / i.aspect)))
        t = np.linspace(start, math.pi - start, 48)  # through pi / 2: the chin (y is down)
        arc = np.stack([np.cos(t), i.aspect * np.sin(t)], axis=1)
        edge = np.stack([np.linspace(-x_edge, x_edge, 16), np.full(16, top)], axis=1)
        return [(shape(np.concatenate([arc, edge]), 0.05), np.array([150.0, 190.0, 215.0]))]
    raise ValueError(f"occluder must be one of {OCCLUDERS}, got {kind!r}")


def _light(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scene lighting: overall gain, a linear gradient in a random direction and a colour tint."""
    height, width = image.shape[:2]
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = ((xs - width / 2) * math.cos(theta) + (ys - height / 2) * math.sin(theta)) / math.hypot(height, width)
    field_ = rng.uniform(0.6, 1.25) * (1.0 + rng.uniform(0.0, 0.8) * ramp)
    return np.clip(image * field_[..., None] * rng.uniform(0.9, 1.1, size=3).astype(np.float32), 0, 255)


def render_face_crop(
    identity: FaceIdentity,
    rng: np.random.Generator,
    crop: int,
    max_yaw: float = 0.45,
    max_pitch: float = 0.0,
    occluders: float = 0.0,
    occluder: str | None = None,
) -> tuple[np.ndarray, np.ndarray, FacePose, str]:
    """One recognition crop ``[crop, crop, 3]`` uint8 of ``identity``, its landmarks ``[5, 2]``,
    its pose and its occluder (``""`` for none).

    ``occluders`` is the probability of an occluder (sunglasses or mask, half each);
    ``occluder`` forces one (``""``: none), which draws the same face, pose and light as
    without it. Pitch and the occluder are drawn from ``rng`` only when ``max_pitch > 0`` and
    ``occluders > 0``, so that the default settings render the crops of earlier versions.
    """
    image = textured_background(rng, crop, crop)
    half_width = rng.uniform(0.26, 0.34) * crop
    pose = FacePose(
        cx=crop / 2 + rng.uniform(-0.05, 0.05) * crop,
        cy=crop / 2 + rng.uniform(-0.03, 0.07) * crop,
        half_width=half_width,
        roll=rng.uniform(-0.3, 0.3),
        yaw=rng.uniform(-max_yaw, max_yaw),
    )
    if max_pitch > 0:
        pose = dataclasses.replace(pose, pitch=rng.uniform(-max_pitch, max_pitch))
    drawn = ""
    if occluders > 0 and rng.uniform() < occluders:
        drawn = OCCLUDERS[int(rng.integers(len(OCCLUDERS)))]
    drawn = drawn if occluder is None else occluder
    parts, _ = face_parts(identity, pose, crop, crop)
    if drawn:
        parts += occluder_parts(identity, pose, drawn, crop, crop)
    for part, color in parts:
        paint(image, part, color)
    return np.rint(_light(image, rng)).astype(np.uint8), landmarks(identity, pose), pose, drawn


def render_face_scene(
    identities: list[FaceIdentity], rng: np.random.Generator, height: int, width: int, max_faces: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
    """One scene: uint8 ``[H, W, 3]`` and, per face, (identity index, landmarks ``[5, 2]``,
    head mask). Faces lie fully inside the image and do not overlap."""
    image = textured_background(rng, height, width)
    faces: list[tuple[int, np.ndarray, np.ndarray]] = []
    taken = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(1, max_faces + 1))):
        for _attempt in range(20):
            who = int(rng.integers(len(identities)))
            identity = identities[who]
            half_width = rng.uniform(0.05, 0.16) * min(height, width)
            reach = 1.25 * half_width * identity.aspect  # the head's radius at any roll, with hair
            if 2 * reach >= min(height, width):
                continue
            pose = FacePose(
                cx=rng.uniform(reach, width - reach),
                cy=rng.uniform(reach, height - reach),
                half_width=half_width,
                roll=rng.uniform(-0.35, 0.35),
                yaw=rng.uniform(-0.45, 0.45),
            )
            parts, head = face_parts(identity, pose, height, width)
            if not (head & taken).any():
                break
        else:
            continue
        taken |= head
        for part, color in parts:
            paint(image, part, color)
        faces.append((who, landmarks(identity, pose), head))
    return np.rint(_light(image, rng)).astype(np.uint8), faces


def _name(index: int) -> str:
    return f"person_{index:05d}"


def lfw_pairs(
    names: list[str], per_identity: int, folds: int, pairs_per_fold: int, rng: np.random.Generator
) -> list[list[tuple[Any, ...]]]:
    """LFW-style pairs: per fold, ``pairs_per_fold`` (name, i, j) same-person pairs and as many
    (name1, i, name2, j) different-person pairs (1-based image numbers), drawn without
    repetition; identities are split between folds so that no identity is in two folds."""
    if len(names) < 2 * folds or per_identity < 2:
        raise ValueError(
            f"pairs need test_identities >= 2 * folds and per_identity >= 2, got test_identities={len(names)}, "
            f"folds={folds}, per_identity={per_identity}"
        )
    result = []
    for fold in range(folds):
        members = names[fold::folds]
        same = [(n, a, b) for n in members for a, b in itertools.combinations(range(1, per_identity + 1), 2)]
        different = [
            (n1, a, n2, b)
            for n1, n2 in itertools.combinations(members, 2)
            for a in range(1, per_identity + 1)
            for b in range(1, per_identity + 1)
        ]
        if min(len(same), len(different)) < pairs_per_fold:
            raise ValueError(
                f"pairs_per_fold={pairs_per_fold} is more than fold {fold} can give without repeats "
                f"({len(same)} same-person, {len(different)} different-person pairs); lower it or add identities"
            )
        pick_same = rng.choice(len(same), pairs_per_fold, replace=False)
        pick_different = rng.choice(len(different), pairs_per_fold, replace=False)
        result.append([same[k] for k in sorted(pick_same)] + [different[k] for k in sorted(pick_different)])
    return result


@export("data.synthesize_faces")
def synthesize_faces(config: FacesConfig | None = None, **overrides: Any) -> dict[str, Path]:
    """Write the ``faces`` dataset (module docstring) and return the paths of the
    ``train``/``val`` JSON files, the ``images`` folder, the ``recognition`` folder and
    ``pairs`` (pairs.txt).

    ``overrides`` replace fields of ``config``: ``synthesize_faces(out="data", identities=10)``.
    """
    config = dataclasses.replace(config or FacesConfig(), **overrides)
    check_common(config.images, config.val_fraction, config.format)
    if config.identities < 1 or config.max_faces < 1 or config.size < 64 or config.crop < 32:
        raise ValueError(
            f"need identities >= 1, max_faces >= 1, size >= 64 and crop >= 32, got {config.identities}, "
            f"{config.max_faces}, {config.size} and {config.crop}"
        )
    # Beyond about 1.2 rad of yaw the far eye would be drawn though the head hides it.
    if not (0 <= config.max_yaw <= 1.2 and 0 <= config.max_pitch <= 0.6 and 0 <= config.occluders <= 1):
        raise ValueError(
            f"need max_yaw in [0, 1.2], max_pitch in [0, 0.6] (radians) and occluders in [0, 1], got "
            f"max_yaw={config.max_yaw}, max_pitch={config.max_pitch}, occluders={config.occluders}"
        )
    total = config.identities + config.test_identities
    names = [_name(k) for k in range(total)]
    pairs = lfw_pairs(
        names[config.identities :],
        config.per_identity,
        config.folds,
        config.pairs_per_fold,
        np.random.default_rng([config.seed, 3]),
    )
    identities = [FaceIdentity.sample(np.random.default_rng([config.seed, 1, k])) for k in range(total)]
    categories = [
        {"id": 1, "name": "face", "supercategory": "face", "keypoints": list(FACE_LANDMARK_NAMES), "skeleton": []}
    ]
    writer = CocoWriter(config.out, categories, config.images, config.val_fraction, "sightkit synthetic faces")
    recognition = Path(config.out) / "recognition"
    marks: dict[str, list[list[float]]] = {}
    poses: dict[str, dict[str, float | str]] = {}
    with progress_bar("faces", config.images + total * config.per_identity, config.progress) as advance:
        for index in range(config.images):
            rng = np.random.default_rng([config.seed, 0, index])
            height, width = image_size(rng, config.size)
            image, faces = render_face_scene(identities[: config.identities], rng, height, width, config.max_faces)
            annotations = []
            for _, points, head in faces:
                keypoints = np.concatenate([points.astype(np.float32), np.full((5, 1), 2.0, np.float32)], axis=1)
                annotations.append(
                    {
                        "category_id": 1,
                        "bbox": mask_box(head),
                        "area": float(head.sum()),
                        "iscrowd": 0,
                        "keypoints": [float(v) for v in keypoints.ravel()],
                        "num_keypoints": 5,
                    }
                )
            writer.add(index, image, annotations, config.format)
            advance()
        for k, (name, identity) in enumerate(zip(names, identities, strict=True)):
            split = "train" if k < config.identities else "test"
            folder = recognition / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(1, config.per_identity + 1):
                crop, points, pose, occluder = render_face_crop(
                    identity,
                    np.random.default_rng([config.seed, 2, k, n]),
                    config.crop,
                    config.max_yaw,
                    config.max_pitch,
                    config.occluders,
                )
                relative = f"{split}/{name}/{name}_{n:04d}.{config.format}"
                save_image(crop, recognition / relative)
                marks[relative] = [[float(x), float(y)] for x, y in points.astype(np.float32)]
                poses[relative] = {"yaw": pose.yaw, "pitch": pose.pitch, "roll": pose.roll, "occluder": occluder}
                advance()
    lines = [f"{config.folds}\t{config.pairs_per_fold}"]
    lines += ["\t".join(str(v) for v in pair) for fold in pairs for pair in fold]
    (recognition / "pairs.txt").write_text("\n".join(lines) + "\n")
    (recognition / "landmarks.json").write_text(json.dumps(marks))
    (recognition / "poses.json").write_text(json.dumps(poses))
    return {
        **writer.close(),
        "images": writer.image_dir,
        "recognition": recognition,
        "pairs": recognition / "pairs.txt",
    }
