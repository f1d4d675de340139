"""Head pose from 5 landmarks: exact recovery where the model is the face, the generator's known
angles within stated tolerances, mirror and rotation symmetries, OpenCV's camera path."""

import math

import numpy as np
import pytest
import torch

from sightkit.data.synthetic.faces import FaceIdentity, FacePose, landmarks, landmarks_3d
from sightkit.ops import euler_from_rotation, head_pose, mean_face_3d, rotation_from_euler

MIRROR = [1, 0, 2, 4, 3]  # ArcFace order after a left-right flip: the eyes and the mouth corners swap


def _identities(count: int, seed: int = 5) -> list[FaceIdentity]:
    return [FaceIdentity.sample(np.random.default_rng([seed, k])) for k in range(count)]


def _generator_mean_face() -> torch.Tensor:
    """The synthetic generator's average 5-point geometry, from identities the tests do not draw."""
    return torch.tensor(np.mean([landmarks_3d(i) for i in _identities(200, seed=99)], 0))


def _project(model: torch.Tensor, angles: torch.Tensor, scale: float = 3.0, shift: float = 60.0) -> torch.Tensor:
    """Scaled orthographic images ``[N, 5, 2]`` of ``model`` turned by ``angles [N, 3]`` (hand-written)."""
    return scale * (model @ rotation_from_euler(angles).transpose(1, 2))[..., :2] + shift


def test_euler_round_trip_and_elementary_rotations() -> None:
    angles = torch.tensor([[0.3, -0.2, 0.5], [-1.2, 0.7, -2.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(euler_from_rotation(rotation_from_euler(angles)), angles, atol=1e-12)
    # Positive yaw moves the nose (z > 0) to the image's right, positive pitch moves it down.
    nose = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert (rotation_from_euler(torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)) @ nose)[0] == pytest.approx(
        math.sin(0.5)
    )
    assert (rotation_from_euler(torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)) @ nose)[1] == pytest.approx(
        math.sin(0.5)
    )


def test_the_generator_draws_the_angles_of_head_pose() -> None:
    """The generator's projection is the rotation of its 3D landmarks (one convention for both)."""
    identity = _identities(1)[0]
    angles = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    drawn = landmarks(identity, FacePose(56.0, 50.0, 30.0, roll=0.3, yaw=0.5, pitch=0.2))
    expected = _project(torch.tensor(landmarks_3d(identity))[None], angles[None], 30.0, 0.0)[0]
    assert torch.allclose(torch.tensor(drawn) - torch.tensor([56.0, 50.0]), expected, atol=1e-12)


@pytest.mark.parametrize("model", [None, "generator"])
def test_exact_when_the_model_is_the_face(model: str | None) -> None:
    face = mean_face_3d() if model is None else _generator_mean_face()
    angles = torch.tensor([[0.7, -0.3, 0.2], [-0.5, 0.25, -0.4], [0.0, 0.0, 0.0], [0.1, 0.4, 2.0]], dtype=torch.float64)
    points = _project(face[None], angles)
    assert torch.allclose(head_pose(points, model=None if model is None else face), angles, atol=1e-9)


def test_synthetic_faces_within_tolerance() -> None:
    """Generator identities vary in shape; with the generator's mean face as the model the
    estimates over |yaw| <= 0.8, |roll| <= 0.4 stay within 0.12 rad of yaw and 0.18 of roll
    (measured: yaw max 0.101, mean 0.020; roll max 0.162, mean 0.031). The default human mean
    face: yaw mean error 0.086 (max 0.22), correlation with the truth 0.998."""
    rng = np.random.default_rng(0)
    truth, points = [], []
    for identity in _identities(300):
        yaw, roll = rng.uniform(-0.8, 0.8), rng.uniform(-0.4, 0.4)
        points.append(landmarks(identity, FacePose(56.0, 56.0, 30.0, roll, yaw)))
        truth.append((yaw, roll))
    truth_t = torch.tensor(truth)
    estimate = head_pose(torch.tensor(np.stack(points)), model=_generator_mean_face())
    error = (estimate[:, [0, 2]] - truth_t).abs()
    assert error[:, 0].max() < 0.12 and error[:, 0].mean() < 0.03
    assert error[:, 1].max() < 0.18 and error[:, 1].mean() < 0.04
    # The default (human) mean face reads these deeper-nosed faces as more turned, but in the right order.
    default = head_pose(torch.tensor(np.stack(points)))
    assert (default[:, 0] - truth_t[:, 0]).abs().mean() < 0.11
    assert np.corrcoef(default[:, 0].numpy(), truth_t[:, 0].numpy())[0, 1] > 0.98


def test_mirrored_face_negates_yaw_and_roll() -> None:
    identity = _identities(1)[0]
    points = torch.tensor(np.stack([landmarks(identity, FacePose(50.0, 60.0, 25.0, 0.2, 0.6, 0.1))]))
    mirrored = points[:, MIRROR].clone()
    mirrored[..., 0] = 100.0 - mirrored[..., 0]
    pose, mirror_pose = head_pose(points), head_pose(mirrored)
    assert pose[0, 0] > 0.3
    assert torch.allclose(mirror_pose[:, [0, 2]], -pose[:, [0, 2]], atol=1e-6)
    assert torch.allclose(mirror_pose[:, 1], pose[:, 1], atol=1e-6)


def test_roll_of_a_rotated_face_is_the_rotation() -> None:
    identity = _identities(1)[0]
    points = torch.tensor(landmarks(identity, FacePose(50.0, 60.0, 25.0, 0.0, 0.4)))
    angle = 0.6
    c, s = math.cos(angle), math.sin(angle)
    centre = torch.tensor([10.0, -5.0], dtype=torch.float64)  # any centre: the pose does not depend on it
    rotated = (points - centre) @ torch.tensor([[c, s], [-s, c]], dtype=torch.float64) + centre
    before, after = head_pose(points[None])[0], head_pose(rotated[None])[0]
    assert after[2] - before[2] == pytest.approx(angle, abs=1e-9)
    assert after[:2].tolist() == pytest.approx(before[:2].tolist(), abs=1e-9)


def test_camera_path_recovers_a_perspective_pose() -> None:
    """solvePnP on a pinhole projection of the model (hand-written) gives back the angles."""
    model = mean_face_3d()
    angles = torch.tensor([0.4, -0.2, 0.3], dtype=torch.float64)
    # Camera frame: z away from the camera, so the face's z (towards the camera) is negated.
    camera_points = (model @ rotation_from_euler(angles).T) * torch.tensor([1.0, 1.0, -1.0]) + torch.tensor(
        [5.0, -3.0, 400.0]
    )
    focal, width, height = 640.0, 640, 480
    pixels = focal * camera_points[:, :2] / camera_points[:, 2:] + torch.tensor([width / 2, height / 2])
    estimate = head_pose(pixels[None], image_size=(height, width))
    assert torch.allclose(estimate[0], angles, atol=1e-5)
    camera = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(head_pose(pixels[None].float(), camera=camera)[0].double(), angles, atol=1e-4)


def test_degenerate_and_empty_inputs() -> None:
    assert head_pose(torch.zeros(0, 5, 2)).shape == (0, 3)
    assert torch.isnan(head_pose(torch.full((1, 5, 2), 7.0))).all()
    assert head_pose(torch.zeros(2, 5, 2, dtype=torch.float64) + torch.arange(5.0)[:, None]).dtype == torch.float64
    with pytest.raises(ValueError, match="landmarks must have shape"):
        head_pose(torch.zeros(3, 4, 2))
    with pytest.raises(TypeError, match="floating-point"):
        head_pose(torch.zeros(3, 5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="model must not be planar"):
        head_pose(torch.rand(1, 5, 2), model=torch.cat([torch.rand(5, 2), torch.zeros(5, 1)], 1).double())
    with pytest.raises(ValueError, match="image_size"):
        head_pose(torch.rand(1, 5, 2), image_size=(0, 10))
