"""Face quality: Laplacian variance equals OpenCV's, a blurred, tiny or turned face fails with its reason."""

import math

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from sightkit.data.synthetic.draw import paint, textured_background
from sightkit.data.synthetic.faces import FaceIdentity, FacePose, face_parts, landmarks
from sightkit.eval import FaceQuality, QualityThresholds, face_quality, laplacian_variance


def _face(yaw: float = 0.0, size: int = 160) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic face image ``[1, 3, S, S]`` uint8 turned by ``yaw`` and its landmarks ``[1, 5, 2]``."""
    identity = FaceIdentity.sample(np.random.default_rng(7))
    image = textured_background(np.random.default_rng(8), size, size)
    pose = FacePose(size / 2, size / 2, 0.25 * size, roll=0.1, yaw=yaw)
    for part, color in face_parts(identity, pose, size, size)[0]:
        paint(image, part, color)
    points = landmarks(identity, pose)
    return torch.from_numpy(np.rint(image).astype(np.uint8)).permute(2, 0, 1)[None], torch.tensor(points)[None].float()


def test_laplacian_variance_equals_opencv() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, size=(23, 31, 3)).astype(np.float32)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    expected = cv2.Laplacian(grey, cv2.CV_64F).var()
    ours = laplacian_variance(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert float(ours[0]) == pytest.approx(expected, rel=1e-5)
    mask = torch.from_numpy(rng.uniform(size=(1, 23, 31)) < 0.3)
    masked = laplacian_variance(torch.from_numpy(image).permute(2, 0, 1)[None], mask)
    assert float(masked[0]) == pytest.approx(cv2.Laplacian(grey, cv2.CV_64F)[mask[0].numpy()].var(), rel=1e-5)
    # A flat image has none; a single bright pixel has the hand-computed variance.
    flat = torch.full((1, 1, 5, 5), 9.0)
    assert float(laplacian_variance(flat)[0]) == 0.0
    dot = torch.zeros(1, 1, 5, 5)
    dot[0, 0, 2, 2] = 1.0
    # Responses: -4 at the centre, +1 at its 4 neighbours, 0 elsewhere over 25 pixels.
    assert float(laplacian_variance(dot)[0]) == pytest.approx((16 + 4) / 25 - 0.0**2)


def test_a_blurred_face_is_rejected_for_sharpness() -> None:
    image, points = _face()
    blurred = TF.gaussian_blur(image, [9, 9], [3.0, 3.0])
    quality = face_quality(torch.cat([image, blurred]), points.repeat(2, 1, 1))
    sharp, soft = quality.sharpness.tolist()
    assert soft < 0.3 * sharp
    reasons = QualityThresholds(min_sharpness=0.5 * sharp).failures(quality)
    assert reasons[0] == [] and len(reasons[1]) == 1 and reasons[1][0].startswith("sharpness")


def test_a_tiny_face_is_rejected_for_size() -> None:
    image, points = _face()
    small = TF.resize(image, [40, 40], antialias=True)
    quality = face_quality(image, points)
    tiny = face_quality(small, points * 0.25)
    # A 4 times smaller image covers 4 times fewer pixels per face (the similarity is exact).
    assert float(quality.size[0]) == pytest.approx(4 * float(tiny.size[0]), rel=1e-6)
    # The ArcFace template spans about 35 of 112 pixels between the eyes: size ~ 112 / 35 * eye distance.
    eyes = float((points[0, 1] - points[0, 0]).norm())
    assert 2.5 * eyes < float(quality.size[0]) < 4.0 * eyes
    thresholds = QualityThresholds(min_face=float(quality.size[0]) / 2)
    assert thresholds.failures(quality) == [[]]
    (reasons,) = thresholds.failures(tiny)
    assert len(reasons) == 1 and reasons[0].startswith("face ") and "min_face" in reasons[0]


def test_a_turned_face_is_rejected_for_yaw_and_scores_are_checked() -> None:
    frontal_image, frontal = _face()
    turned_image, turned = _face(yaw=0.9)
    quality = face_quality(
        torch.cat([frontal_image, turned_image]), torch.cat([frontal, turned]), scores=torch.tensor([0.99, 0.3])
    )
    yaws = quality.yaw.abs().tolist()
    assert yaws[0] < 0.1 < 0.5 < yaws[1]
    reasons = QualityThresholds(max_yaw=0.4, min_score=0.5).failures(quality)
    assert reasons[0] == []
    assert [r.split()[0] for r in reasons[1]] == ["|yaw|", "score"]
    assert QualityThresholds(max_yaw=0.4).passes(quality).tolist() == [True, False]
    records = quality.to_dicts()
    assert records[1]["score"] == pytest.approx(0.3) and records[0]["yaw"] == pytest.approx(float(quality.yaw[0]))


def test_missing_scores_and_bad_thresholds() -> None:
    image, points = _face()
    quality = face_quality(image, points)
    assert math.isnan(float(quality.score[0])) and quality.to_dicts()[0]["score"] is None
    assert QualityThresholds(min_score=0.9).failures(quality) == [[]]
    empty = face_quality(image, torch.zeros(0, 5, 2), image_index=torch.zeros(0, dtype=torch.long))
    assert len(empty) == 0 and isinstance(empty, FaceQuality)
    with pytest.raises(ValueError, match="min_face must be a number >= 0"):
        QualityThresholds(min_face=-1)
    with pytest.raises(ValueError, match="scores must be a tensor"):
        face_quality(image, points, scores=torch.ones(3))
    with pytest.raises(ValueError, match="images must be a tensor"):
        laplacian_variance(torch.ones(3, 4, 4))
