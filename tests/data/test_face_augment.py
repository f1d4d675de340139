"""Face augmentation: every transform keeps the landmarks on the features they mark (markers drawn
at the landmarks end up at the returned landmarks), determinism under a generator, config checks."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightkit.data import (
    FaceAugment,
    FaceFolder,
    augment_face,
    expression_warp,
    illuminate,
    jitter_landmarks,
    occlude,
    pose_warp,
)
from sightkit.ops import umeyama

SIZE = 96
#: A face's landmarks in a 96 x 96 image (continuous pixel coordinates), roughly ArcFace's layout.
LANDMARKS = torch.tensor([[34.0, 38.0], [62.0, 37.0], [48.0, 53.0], [36.5, 68.0], [59.5, 67.5]])


def _marker(point: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """A grey Gaussian blob ``[3, S, S]`` (peak 255) centred on ``point`` on a black image."""
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    blob = 255 * torch.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * sigma**2))
    return blob.expand(3, SIZE, SIZE).clone()


def _centroid(image: torch.Tensor) -> torch.Tensor:
    """The intensity-weighted centre ``[2]`` (x, y) of an image's marker, continuous coordinates."""
    weight = image.float().mean(0)
    weight = torch.where(weight > 0.1 * weight.max(), weight, torch.zeros_like(weight))
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    return torch.stack([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


def _marker_errors(transform, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per landmark, the distance between where its marker went and the returned landmark; and
    the returned landmarks. The same seed gives the same parameters for every marker image."""
    errors, moved = [], None
    for k in range(5):
        image, moved = transform(_marker(LANDMARKS[k]), LANDMARKS.clone(), torch.Generator().manual_seed(seed))
        errors.append((_centroid(image) - moved[k]).norm())
    return torch.stack(errors), moved


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pose_warp_moves_the_landmarks_with_the_pixels(seed: int) -> None:
    errors, moved = _marker_errors(lambda i, m, g: pose_warp(i, m, g, turn=0.6, perspective=0.08), seed)
    assert errors.max() < 0.3
    assert (moved - LANDMARKS).norm(dim=1).max() > 1.0  # it did move them


def test_pose_warp_turn_shrinks_one_side() -> None:
    """With only the turn, the eye on the side that turns away comes closer to the nose (foreshortening)."""
    gaps = []
    for seed in range(6):
        _, moved = pose_warp(_marker(LANDMARKS[0]), LANDMARKS, torch.Generator().manual_seed(seed), 0.6, 0.0)
        gaps.append(float((moved[1, 0] - moved[2, 0]) - (moved[2, 0] - moved[0, 0])))
    original = float((LANDMARKS[1, 0] - LANDMARKS[2, 0]) - (LANDMARKS[2, 0] - LANDMARKS[0, 0]))
    assert min(gaps) < original - 2 and max(gaps) > original + 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expression_warp_moves_the_mouth_corners_with_their_pixels(seed: int) -> None:
    errors, moved = _marker_errors(lambda i, m, g: expression_warp(i, m, g, smile=0.12), seed)
    assert errors.max() < 0.35
    assert torch.allclose(moved[:2], LANDMARKS[:2], atol=0.02) and (moved[3:] - LANDMARKS[3:]).norm(dim=1).max() > 0.5


def test_illumination_keeps_the_landmarks_and_changes_the_light() -> None:
    errors, moved = _marker_errors(illuminate, 3)
    assert errors.max() < 0.3 and torch.equal(moved, LANDMARKS)
    flat = torch.full((3, SIZE, SIZE), 128.0)
    lit, _ = illuminate(flat, LANDMARKS, torch.Generator().manual_seed(3), gamma=0.0, temperature=0.2, shading=0.0)
    # Only the colour temperature acts: red and blue gains 1 + t and 1 - t, green untouched.
    gains = lit.mean((1, 2)) / 128
    assert gains[1] == pytest.approx(1.0) and gains[0] + gains[2] == pytest.approx(2.0) and gains[0] != 1


@pytest.mark.parametrize("kind", ["sunglasses", "mask", "erase"])
def test_occluders_hide_what_they_should(kind: str) -> None:
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    image = torch.stack([xs, ys, xs + ys]).float() % 251  # every pixel distinct from its neighbours
    out, moved = occlude(image, LANDMARKS, torch.Generator().manual_seed(0), kind=kind)
    assert torch.equal(moved, LANDMARKS)
    changed = (out != image).any(0)
    hidden = [bool(changed[int(y), int(x)]) for x, y in LANDMARKS.tolist()]
    if kind == "sunglasses":
        assert hidden == [True, True, False, False, False]
    elif kind == "mask":
        assert hidden == [False, False, True, True, True]
    else:
        # One rectangle of one grey value, nothing else touched.
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.float().mean() > 0.9 and changed.sum() == box.numel() - (~box).sum()
        assert out[:, changed].unique().numel() == 1
    assert not changed[0, 0] and not changed[-1, -1]


def test_jitter_is_a_bounded_similarity() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        moved = jitter_landmarks(LANDMARKS, generator, rotation=0.2, scale=0.1, shift=0.06)
        matrix = umeyama(LANDMARKS.double(), moved.double())
        fitted = LANDMARKS.double() @ matrix[:, :2].T + matrix[:, 2]
        assert torch.allclose(fitted, moved.double(), atol=1e-4)  # exactly a similarity
        scale = float(torch.linalg.det(matrix[:, :2]).sqrt())
        angle = math.atan2(float(matrix[1, 0]), float(matrix[0, 0]))
        assert 0.9 - 1e-6 <= scale <= 1.1 + 1e-6 and abs(angle) <= 0.2 + 1e-6


def test_augment_face_is_deterministic_and_equals_its_parts() -> None:
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 255
    config = FaceAugment(pose=1.0, expression=1.0, illumination=1.0, occlusion=1.0)
    first = augment_face(image, LANDMARKS, config, torch.Generator().manual_seed(7))
    again = augment_face(image, LANDMARKS, config, torch.Generator().manual_seed(7))
    other = augment_face(image, LANDMARKS, config, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    # Nothing on: the image comes back as it was.
    same, marks = augment_face(image, LANDMARKS, FaceAugment(), torch.Generator().manual_seed(7))
    assert torch.equal(same, image) and torch.equal(marks, LANDMARKS)
    # Expression alone equals the function called after the four group draws.
    generator = torch.Generator().manual_seed(9)
    ours = augment_face(image, LANDMARKS, FaceAugment(expression=1.0), generator)
    reference_generator = torch.Generator().manual_seed(9)
    torch.rand(4, generator=reference_generator)
    reference = expression_warp(image, LANDMARKS, reference_generator, FaceAugment().smile)
    assert torch.equal(ours[0], reference[0]) and torch.equal(ours[1], reference[1])


def test_config_from_mapping() -> None:
    config = FaceAugment.from_mapping({"pose": 0.5, "occlusion": 0.25, "turn": 0.3})
    assert (config.pose, config.occlusion, config.turn, config.illumination) == (0.5, 0.25, 0.3, 0.0)
    assert config.enabled and not FaceAugment.from_mapping(None).enabled
    with pytest.raises(ValueError, match="unknown key 'ilumination'; did you mean 'illumination'"):
        FaceAugment.from_mapping({"ilumination": 0.5})
    with pytest.raises(ValueError, match="pose is a probability"):
        FaceAugment(pose=1.5)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        FaceAugment(gamma=-1)
    with pytest.raises(ValueError, match="landmarks must be a floating-point tensor"):
        pose_warp(torch.zeros(3, 8, 8), torch.zeros(4, 2), torch.Generator())


def test_face_folder_augments_repeatably(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name / f"{name}_0001.png")
    config = FaceAugment(illumination=1.0, occlusion=1.0)
    plain = FaceFolder(tmp_path, size=32, train=False, augment=config)
    folder = FaceFolder(tmp_path, size=32, train=True, augment=config)
    torch.manual_seed(0)
    first = folder[0][0]
    torch.manual_seed(0)
    assert torch.equal(folder[0][0], first)
    assert not torch.equal(first, plain[0][0]) and not torch.equal(first, plain[0][0].flip(-1))
