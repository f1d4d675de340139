"""Face alignment: Umeyama recovers known similarities and equals scikit-image's estimate;
the warp equals scikit-image's and OpenCV's; aligned landmarks land on the template."""

import math

import cv2
import numpy as np
import pytest
import torch
from skimage.transform import EuclideanTransform, SimilarityTransform, warp

from sightkit.ops import align_faces, arcface_template, umeyama, warp_affine


def _similarity(scale: float, angle: float, tx: float, ty: float) -> torch.Tensor:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return torch.tensor([[c, -s, tx], [s, c, ty]], dtype=torch.float64)


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points @ matrix[..., :2].transpose(-2, -1) + matrix[..., 2].unsqueeze(-2)


def test_recovers_a_known_similarity() -> None:
    g = torch.Generator().manual_seed(0)
    src = torch.rand(6, 5, 2, generator=g, dtype=torch.float64) * 100
    truth = torch.stack([_similarity(0.3 + k, -2.5 + k, 10.0 * k, -7.0) for k in range(6)])
    found = umeyama(src, _apply(truth, src))
    torch.testing.assert_close(found, truth, rtol=0, atol=1e-9)


def test_equals_scikit_image_on_noisy_points() -> None:
    g = torch.Generator().manual_seed(1)
    src = torch.rand(20, 5, 2, generator=g, dtype=torch.float64) * 200
    dst = _apply(_similarity(0.4, 0.7, 3.0, 9.0), src) + torch.randn(20, 5, 2, generator=g, dtype=torch.float64) * 4
    dst[3] = src[3] * torch.tensor([-1.0, 1.0], dtype=torch.float64)  # a mirror image: still a proper rotation
    for estimate_scale, reference in ((True, SimilarityTransform), (False, EuclideanTransform)):
        found = umeyama(src, dst, estimate_scale=estimate_scale)
        for k in range(20):
            expected = reference.from_estimate(src[k].numpy(), dst[k].numpy())
            assert expected
            np.testing.assert_allclose(found[k].numpy(), expected.params[:2], rtol=1e-9, atol=1e-9)
        assert (torch.linalg.det(found[..., :2]) > 0).all()


def test_aligned_landmarks_land_on_the_template() -> None:
    # Landmarks that are a similarity image of the template (as a face in a photo would be):
    # the matrix of align_faces maps them back onto the template within 1e-3 px.
    template = arcface_template(112, torch.float64)
    truth = torch.stack([_similarity(2.3, 0.4, 150.0, 60.0), _similarity(0.8, -1.0, 20.0, 200.0)])
    landmarks = _apply(truth, template)
    images = torch.zeros(2, 3, 320, 320)
    crops, matrices = align_faces(images, landmarks)
    assert crops.shape == (2, 3, 112, 112)
    assert (_apply(matrices, landmarks) - template).abs().max() < 1e-3
    # The template at another crop size scales about the pixel-centre origin.
    torch.testing.assert_close(arcface_template(224, torch.float64), 2 * template)


def test_crop_shows_the_landmarks_where_the_template_is() -> None:
    # Bright dots drawn at the landmarks of a rotated, scaled face are found at the template points.
    template = arcface_template(112, torch.float64)
    landmarks = _apply(_similarity(1.7, 0.5, 120.0, 40.0), template)
    image = np.zeros((300, 300), np.float32)
    for x, y in landmarks.round().long().tolist():
        cv2.circle(image, (x, y), 4, 1.0, -1)
    landmarks = landmarks.round()  # the dots sit at the rounded points
    crop, _ = align_faces(torch.from_numpy(image)[None, None].expand(1, 3, -1, -1), landmarks[None])
    heat = crop[0, 0]
    for x, y in template.tolist():
        window = heat[round(y) - 2 : round(y) + 3, round(x) - 2 : round(x) + 3]
        assert window.max() > 0.9, (x, y)


def _smooth_image(height: int, width: int, channels: int = 3) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [np.sin(xs / (7 + 3 * c)) * np.cos(ys / (5 + 2 * c)) for c in range(channels)]
    return (127.5 + 120 * np.stack(planes)).astype(np.float32)


def test_warp_equals_scikit_image() -> None:
    # To float32 rounding of the sample positions (about 1e-5 px on a slope of up to 25 levels per px).
    image = _smooth_image(60, 80)
    matrix = _similarity(0.9, 0.3, -5.0, 12.0)
    ours = warp_affine(torch.from_numpy(image)[None], matrix[None].float(), (50, 70))[0].numpy()
    inverse = SimilarityTransform(matrix=np.vstack([matrix.numpy(), [0, 0, 1]])).inverse
    for channel in range(3):
        expected = warp(image[channel], inverse, output_shape=(50, 70), order=1, mode="constant", cval=0.0,
                        preserve_range=True)  # fmt: skip
        np.testing.assert_allclose(ours[channel], expected, atol=1e-2)


def test_warp_equals_opencv() -> None:
    # OpenCV quantises sample positions to 1/32 pixel, so agreement is to a fraction of a grey level.
    image = _smooth_image(90, 70)
    matrix = _similarity(1.3, -0.6, 30.0, 40.0)
    ours = warp_affine(torch.from_numpy(image)[None], matrix[None].float(), (100, 120))[0].numpy()
    expected = cv2.warpAffine(np.ascontiguousarray(image.transpose(1, 2, 0)), matrix.numpy(), (120, 100),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip
    difference = np.abs(ours.transpose(1, 2, 0) - expected)
    assert difference.max() < 3.0 and difference.mean() < 0.2


def test_several_faces_per_image_and_uint8() -> None:
    image = torch.from_numpy(_smooth_image(120, 120)).round().to(torch.uint8)
    images = torch.stack([image, 255 - image])
    template = arcface_template(112, torch.float64)
    landmarks = torch.stack([_apply(_similarity(0.5, 0.1 * k, 20.0 + 5 * k, 30.0), template) for k in range(3)])
    crops, _ = align_faces(images, landmarks, size=64, image_index=torch.tensor([1, 0, 1]))
    single, _ = align_faces(images[1:], landmarks[:1], size=64)
    assert crops.dtype == torch.float32 and crops.shape == (3, 3, 64, 64)
    torch.testing.assert_close(crops[0], single[0])


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="src holds a set of coincident points"):
        umeyama(torch.ones(1, 5, 2), torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"dst must have as many points as src \(5\), got \(4, 2\)"):
        umeyama(torch.rand(5, 2), torch.rand(4, 2))
    with pytest.raises(TypeError, match="src must be a floating-point tensor"):
        umeyama(torch.ones(5, 2, dtype=torch.long), torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"landmarks must have shape \[N, 5, 2\].*\(2, 4, 2\)"):
        align_faces(torch.zeros(2, 3, 10, 10), torch.rand(2, 4, 2))
    with pytest.raises(ValueError, match=r"one face per image \(2\), got 3; pass image_index"):
        align_faces(torch.zeros(2, 3, 10, 10), torch.rand(3, 5, 2))
    with pytest.raises(ValueError, match=r"matrices must have shape \[B, 2, 3\] = \[1, 2, 3\]"):
        warp_affine(torch.zeros(1, 3, 10, 10), torch.zeros(2, 2, 3), 5)
