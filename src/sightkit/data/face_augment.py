"""One-to-many augmentation for face recognition: from one face image and its 5 landmarks,
views with another pose, light, expression or occluder, so that an embedder trained on them
learns features that do not change with these (Masi et al., "Do we really need to collect
millions of faces for effective face recognition?", ECCV 2016; the survey of Wang and Deng,
"Deep face recognition: a survey", 2021, calls this face processing).

Every transform takes an image ``[3, H, W]`` (0-255, uint8 or float), its landmarks ``[5, 2]``
(x, y, continuous pixel convention, ArcFace order) and an explicit ``torch.Generator``, and
returns the new image (float32, 0-255) and landmarks that stay on the same facial features:

- :func:`pose_warp`: a yaw-like turn (the perspective view of the face plane rotated about its
  vertical axis: one side shrinks) and a small random perspective, on torchvision v2's
  ``perspective`` for the image and the landmarks (``tv_tensors.KeyPoints``);
- :func:`jitter_landmarks`: a random similarity of the landmarks alone, before alignment, which
  rotates, scales and shifts the aligned crop (as an imprecise detector would);
- :func:`illuminate`: gamma (torchvision's ``adjust_gamma``), colour temperature (red against
  blue gain) and a directional shading ramp;
- :func:`expression_warp`: a smooth local warp that moves the mouth corners (smile, frown,
  wider or narrower mouth) and carries their landmarks along;
- :func:`occlude`: random erasing (torchvision's ``erase``), or sunglasses or a face mask drawn
  from the landmarks (the landmarks do not move; they are hidden).

:func:`augment_face` applies each group with the probability :class:`FaceAugment` gives it
(the ``augment=`` key of face training: ``augment='{pose: 0.5, illumination: 0.5}'``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors

from sightkit._api import export

#: The augmentation groups, in the order :func:`augment_face` applies them.
GROUPS = ("pose", "expression", "illumination", "occlusion")
OCCLUSIONS = ("erase", "sunglasses", "mask")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@export("data.FaceAugment")
@dataclass(frozen=True)
class FaceAugment:
    """Probabilities of the four augmentation groups (0: off) and their strengths.

    Lengths are fractions of the face size: the distance from the eyes' midpoint to the
    mouth's midpoint (about 40 pixels in a 112-pixel ArcFace crop).
    """

    pose: float = field(default=0.0, metadata=_help("probability of a pose change (turn, perspective, jitter)"))
    expression: float = field(default=0.0, metadata=_help("probability of a mouth warp"))
    illumination: float = field(default=0.0, metadata=_help("probability of gamma, colour temperature and shading"))
    occlusion: float = field(default=0.0, metadata=_help("probability of erasing, sunglasses or a mask"))
    turn: float = field(default=0.5, metadata=_help("largest yaw-like turn of the face plane, radians"))
    perspective: float = field(default=0.05, metadata=_help("largest projective coefficient, per face size"))
    rotation: float = field(default=0.2, metadata=_help("largest rotation of the landmark jitter, radians"))
    scale: float = field(default=0.1, metadata=_help("landmark jitter scale in [1 - scale, 1 + scale]"))
    shift: float = field(default=0.06, metadata=_help("largest landmark jitter shift, face sizes"))
    gamma: float = field(default=0.5, metadata=_help("gamma drawn in [exp(-gamma), exp(gamma)]"))
    temperature: float = field(
        default=0.2, metadata=_help("red gain 1 + t, blue 1 - t, t in [-temperature, temperature]")
    )
    shading: float = field(default=0.6, metadata=_help("largest depth of the shading ramp across one face size"))
    smile: float = field(default=0.12, metadata=_help("largest move of a mouth corner, face sizes"))
    erase: float = field(default=0.25, metadata=_help("largest erased area, fraction of the image"))

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"augment: {spec.name} must be a finite number >= 0, got {value!r}")
        for name in GROUPS:
            if getattr(self, name) > 1:
                raise ValueError(f"augment: {name} is a probability and must lie in [0, 1], got {getattr(self, name)}")
        if self.scale >= 1 or self.turn >= 1.2 or self.erase >= 1:
            raise ValueError(
                f"augment: need scale < 1, turn < 1.2 and erase < 1, got {self.scale}, {self.turn}, {self.erase}"
            )

    @property
    def enabled(self) -> bool:
        """Whether any group has a non-zero probability."""
        return any(getattr(self, name) > 0 for name in GROUPS)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> FaceAugment:
        """From the ``augment=`` key: a mapping of group probabilities and strengths (``{}`` or
        ``None``: nothing), e.g. ``{pose: 0.5, occlusion: 0.3, turn: 0.6}``.

        Raises:
            ValueError: an unknown key (the closest known one is suggested) or a bad value.
        """
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            raise TypeError(f"augment must be a mapping like {{pose: 0.5, illumination: 0.5}}, got {mapping!r}")
        known = [spec.name for spec in dataclasses.fields(cls)]
        for key in mapping:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
                raise ValueError(f"augment: unknown key {key!r}{hint}")
        return cls(**{str(k): float(v) for k, v in mapping.items()})


def _check(image: Tensor, landmarks: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor [3, H, W] (RGB, 0-255), got {got}")
    if not isinstance(landmarks, Tensor) or landmarks.shape != (5, 2) or not landmarks.is_floating_point():
        got = tuple(landmarks.shape) if isinstance(landmarks, Tensor) else type(landmarks).__name__
        raise ValueError(f"landmarks must be a floating-point tensor [5, 2] (x, y), got {got}")
    return image.float(), landmarks.float()


def face_size(landmarks: Tensor) -> Tensor:
    """The face's length unit: distance from the eyes' midpoint to the mouth's midpoint, ``[...]``."""
    eyes = landmarks[..., :2, :].mean(-2)
    mouth = landmarks[..., 3:, :].mean(-2)
    return (mouth - eyes).norm(dim=-1).clamp_min(1e-6)


def _uniform(generator: torch.Generator, low: float, high: float, size: int = 1) -> Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, dtype=torch.float64)


def _face_frame(landmarks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The eyes' midpoint, the unit vector from the left to the right eye and the unit normal
    pointing down the face (towards the mouth): ``(origin [2], across [2], down [2])``."""
    origin = landmarks[:2].mean(0)
    across = landmarks[1] - landmarks[0]
    across = across / across.norm().clamp_min(1e-6)
    down = torch.stack([-across[1], across[0]])
    return origin, across, down


@export("data.pose_warp")
def pose_warp(
    image: Tensor, landmarks: Tensor, generator: torch.Generator, turn: float = 0.5, perspective: float = 0.05
) -> tuple[Tensor, Tensor]:
    """A yaw-like turn and a random perspective of the image and its landmarks.

    The turn is the pinhole view, from 2.5 face sizes away, of the image plane rotated by
    ``phi ~ U(-turn, turn)`` about the vertical axis through the face centre: ``x' = x cos(phi) /
    (1 + x sin(phi) / D)``, ``y' = y / (1 + x sin(phi) / D)`` in face-centred coordinates, so one
    side of the face shrinks and its far side narrows, as a real turn does. The perspective
    adds a random projective row ``(px, py) ~ U(-perspective, perspective) / face size``.

    Returns:
        ``(image [3, H, W] float32, landmarks [5, 2])``; outside pixels are 0.
    """
    image, landmarks = _check(image, landmarks)
    size = float(face_size(landmarks))
    centre = landmarks.double().mean(0)
    phi = float(_uniform(generator, -turn, turn))
    projective = _uniform(generator, -perspective, perspective, 2) / size
    distance = 2.5 * size
    turned = torch.tensor(
        [[math.cos(phi), 0.0, 0.0], [0.0, 1.0, 0.0], [math.sin(phi) / distance + projective[0], projective[1], 1.0]],
        dtype=torch.float64,
    )
    to_centre = torch.tensor([[1.0, 0.0, -centre[0]], [0.0, 1.0, -centre[1]], [0.0, 0.0, 1.0]], dtype=torch.float64)
    back = torch.tensor([[1.0, 0.0, centre[0]], [0.0, 1.0, centre[1]], [0.0, 0.0, 1.0]], dtype=torch.float64)
    forward = back @ turned @ to_centre
    # torchvision's coefficients map output pixels to input pixels: the inverse, scaled to h33 = 1.
    inverse = torch.linalg.inv(forward)
    coefficients = (inverse / inverse[2, 2]).flatten()[:8].tolist()
    height, width = image.shape[-2:]
    warped = TF.perspective(image, None, None, coefficients=coefficients)
    points = tv_tensors.KeyPoints(landmarks, canvas_size=(height, width))
    moved = TF.perspective(points, None, None, coefficients=coefficients)
    return warped, moved.as_subclass(Tensor).reshape(5, 2)


@export("data.jitter_landmarks")
def jitter_landmarks(
    landmarks: Tensor, generator: torch.Generator, rotation: float = 0.2, scale: float = 0.1, shift: float = 0.06
) -> Tensor:
    """The landmarks moved by a random similarity about their centre (rotation in
    ``[-rotation, rotation]``, scale in ``[1 - scale, 1 + scale]``, shift up to ``shift`` face sizes
    in x and y): aligning the unchanged image to them gives a rotated, scaled and shifted crop.

    Returns:
        ``[5, 2]``.
    """
    if not isinstance(landmarks, Tensor) or landmarks.shape != (5, 2) or not landmarks.is_floating_point():
        got = tuple(landmarks.shape) if isinstance(landmarks, Tensor) else type(landmarks).__name__
        raise ValueError(f"landmarks must be a floating-point tensor [5, 2] (x, y), got {got}")
    angle = float(_uniform(generator, -rotation, rotation))
    factor = float(_uniform(generator, 1 - scale, 1 + scale))
    offset = _uniform(generator, -shift, shift, 2) * float(face_size(landmarks))
    c, s = math.cos(angle), math.sin(angle)
    linear = factor * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    centre = landmarks.double().mean(0)
    return ((landmarks.double() - centre) @ linear.T + centre + offset).to(landmarks.dtype)


@export("data.illuminate")
def illuminate(
    image: Tensor,
    landmarks: Tensor,
    generator: torch.Generator,
    gamma: float = 0.5,
    temperature: float = 0.2,
    shading: float = 0.6,
) -> tuple[Tensor, Tensor]:
    """Another light: gamma ``exp(U(-gamma, gamma))`` (``TF.adjust_gamma``), red and blue gains
    ``1 + t`` and ``1 - t`` with ``t ~ U(-temperature, temperature)`` (warmer or colder light), and
    a shading ramp ``1 + a r`` in a random direction, ``r`` the signed distance from the face
    centre in face sizes clipped to [-1, 1], ``a ~ U(0, shading)``. The landmarks do not move.

    Returns:
        ``(image [3, H, W] float32 in [0, 255], landmarks [5, 2])``.
    """
    image, landmarks = _check(image, landmarks)
    exponent = math.exp(float(_uniform(generator, -gamma, gamma)))
    tint = float(_uniform(generator, -temperature, temperature))
    direction = float(_uniform(generator, 0.0, 2 * math.pi))
    depth = float(_uniform(generator, 0.0, shading))
    lit = TF.adjust_gamma(image.clamp(0, 255) / 255, exponent) * 255
    lit = lit * torch.tensor([1 + tint, 1.0, 1 - tint])[:, None, None]
    height, width = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    centre = landmarks.mean(0)
    ramp = ((xs - centre[0]) * math.cos(direction) + (ys - centre[1]) * math.sin(direction)) / face_size(landmarks)
    return (lit * (1 + depth * ramp.clamp(-1, 1))).clamp(0, 255), landmarks.clone()


@export("data.expression_warp")
def expression_warp(
    image: Tensor, landmarks: Tensor, generator: torch.Generator, smile: float = 0.12
) -> tuple[Tensor, Tensor]:
    """Move each mouth corner by a random displacement (up or down by ``U(-smile, smile)`` face
    sizes, both corners together as in a smile or a frown, plus ``U(-smile, smile) / 2`` outwards
    and a small independent part), with a smooth warp around it.

    The warp reads the output at ``q`` from the input at ``q - D(q)``, ``D(q) = sum_i d_i w_i(q)``
    with ``w_i(q) = exp(-|q - (p_i + d_i)|^2 / (2 sigma^2))`` centred on the moved corner ``p_i + d_i``
    and ``sigma`` a third of the mouth's width; each ``|d_i|`` is kept below ``sigma`` so that the
    map does not fold. Every landmark ``p`` goes where the warp puts its pixel, the fixed point
    of ``q = p + D(q)``: the mouth corners to about ``p_i + d_i``, the nose a little if it is near.

    Returns:
        ``(image [3, H, W] float32, landmarks [5, 2])``.
    """
    image, landmarks = _check(image, landmarks)
    size = float(face_size(landmarks))
    _, across, down = _face_frame(landmarks)
    lift = float(_uniform(generator, -smile, smile)) * size
    widen = float(_uniform(generator, -smile, smile)) * size / 2
    own = (_uniform(generator, -smile, smile, 4) * size / 4).reshape(2, 2).float()
    corners = landmarks[3:]
    displacement = torch.stack([-widen * across, widen * across]) - lift * down + own
    sigma = max(float((corners[1] - corners[0]).norm()) / 3, 1.0)
    # |d| < sigma keeps |grad D| below exp(-1/2) < 1: the warp is one-to-one.
    length = displacement.norm(dim=1, keepdim=True)
    displacement = displacement * (0.9 * sigma / length.clamp_min(0.9 * sigma))
    moved = corners + displacement

    def field(points: Tensor) -> Tensor:
        """``D`` at points ``[..., 2]``."""
        weights = torch.exp(-(points[..., None, :] - moved).square().sum(-1) / (2 * sigma**2))  # [..., 2]
        return weights @ displacement

    height, width = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    grid = torch.stack([xs, ys], -1)  # [H, W, 2] output points, continuous coordinates
    normalised = (grid - field(grid)) / torch.tensor([width, height]) * 2 - 1  # grid_sample, align_corners=False
    warped = F.grid_sample(image[None], normalised[None], mode="bilinear", padding_mode="border", align_corners=False)
    # q = p + D(q) is a contraction (|grad D| < 1): iterate to the landmarks' new places.
    points = landmarks.clone()
    for _ in range(30):
        points = landmarks + field(points)
    return warped[0], points


def _sunglasses(landmarks: Tensor, height: int, width: int) -> Tensor:
    """``[H, W]`` bool: two lenses (ellipses about the eyes, along the eye line) and a bridge."""
    origin, across, down = _face_frame(landmarks)
    half = float((landmarks[1] - landmarks[0]).norm()) / 2
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    offset = torch.stack([xs, ys], -1) - origin
    a, b = offset @ across, offset @ down  # along the eye line, and down the face
    lenses = ((a.abs() - half) / (0.7 * half)).square() + (b / (0.5 * half)).square() <= 1
    bridge = (a.abs() <= half) & (b.abs() <= 0.06 * half)
    return lenses | bridge


def _mask(landmarks: Tensor, height: int, width: int) -> Tensor:
    """``[H, W]`` bool: a cloth from just above the nose tip to below the mouth, wider than the mouth."""
    origin, across, down = _face_frame(landmarks)
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    offset = torch.stack([xs, ys], -1) - origin
    a, b = offset @ across, offset @ down
    nose = float((landmarks[2] - origin) @ down)
    mouth = float(((landmarks[3:].mean(0)) - origin) @ down)
    half_width = 0.85 * float((landmarks[1] - landmarks[0]).norm())
    top, bottom = 0.6 * nose, mouth + 0.8 * (mouth - nose)
    # Rounded at the chin: the half-width narrows below the mouth.
    narrowing = ((b - mouth) / (bottom - mouth)).clamp(0, 1)
    return (b >= top) & (b <= bottom) & (a.abs() <= half_width * (1 - 0.5 * narrowing.square()))


@export("data.occlude")
def occlude(
    image: Tensor, landmarks: Tensor, generator: torch.Generator, erase: float = 0.25, kind: str | None = None
) -> tuple[Tensor, Tensor]:
    """Hide part of the face: ``kind`` (random when ``None``) is ``"erase"`` (a rectangle of
    ``U(0.02, erase)`` of the image with aspect ratio in [0.3, 3.3] filled with one random
    grey, as torchvision's ``RandomErasing``), ``"sunglasses"`` (two dark lenses over the eyes) or
    ``"mask"`` (a plain cloth over the nose and the mouth), placed from the landmarks.

    Returns:
        ``(image [3, H, W] float32, landmarks [5, 2])``; the landmarks do not move.
    """
    image, landmarks = _check(image, landmarks)
    choice = int(torch.randint(len(OCCLUSIONS), (1,), generator=generator))
    kind = OCCLUSIONS[choice] if kind is None else kind
    height, width = image.shape[-2:]
    shade = _uniform(generator, 0.0, 1.0, 3).float()
    if kind == "erase":
        area = float(_uniform(generator, 0.02, max(erase, 0.02))) * height * width
        aspect = math.exp(float(_uniform(generator, math.log(0.3), math.log(3.3))))
        h = min(height, max(1, round(math.sqrt(area * aspect))))
        w = min(width, max(1, round(math.sqrt(area / aspect))))
        top = int(torch.randint(height - h + 1, (1,), generator=generator))
        left = int(torch.randint(width - w + 1, (1,), generator=generator))
        value = torch.full((3, 1, 1), float(shade[0]) * 255)
        return TF.erase(image, top, left, h, w, value), landmarks.clone()
    if kind == "sunglasses":
        covered, colour = _sunglasses(landmarks, height, width), 10 + 50 * shade
    elif kind == "mask":
        covered, colour = _mask(landmarks, height, width), 150 + 100 * shade
    else:
        raise ValueError(f"kind must be one of {OCCLUSIONS} or None, got {kind!r}")
    return torch.where(covered, colour[:, None, None], image), landmarks.clone()


@export("data.augment_face")
def augment_face(
    image: Tensor, landmarks: Tensor, augment: FaceAugment, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Apply each group of ``augment`` with its probability, in the order pose, expression,
    illumination, occlusion (module docstring).

    One uniform number is drawn per group whether or not it applies, so that switching one
    group off does not change what the others draw. The pose group ends with
    :func:`jitter_landmarks`: the returned landmarks are the ones to align with, no longer
    exactly on the features (by the jitter's similarity).

    Args:
        image: ``[3, H, W]`` RGB, 0-255. landmarks: ``[5, 2]`` continuous pixel coordinates.
        augment: the probabilities and strengths. generator: the source of randomness.

    Returns:
        ``(image [3, H, W] float32, landmarks [5, 2])``.
    """
    image, landmarks = _check(image, landmarks)
    draws = torch.rand(len(GROUPS), generator=generator).tolist()
    applies = {name: draw < getattr(augment, name) for name, draw in zip(GROUPS, draws, strict=True)}
    if applies["pose"]:
        image, landmarks = pose_warp(image, landmarks, generator, augment.turn, augment.perspective)
    if applies["expression"]:
        image, landmarks = expression_warp(image, landmarks, generator, augment.smile)
    if applies["illumination"]:
        image, landmarks = illuminate(image, landmarks, generator, augment.gamma, augment.temperature, augment.shading)
    if applies["occlusion"]:
        image, landmarks = occlude(image, landmarks, generator, augment.erase)
    if applies["pose"]:
        landmarks = jitter_landmarks(landmarks, generator, augment.rotation, augment.scale, augment.shift)
    return image, landmarks
