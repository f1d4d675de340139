"""The anti-aliased rasteriser: coverage, masks and boxes in continuous pixel coordinates."""

import math

import numpy as np
import pytest

from sightkit.data.synthetic.draw import SUPERSAMPLE, capsule, coverage, paint, polygon_circle, polygon_regular
from sightkit.data.synthetic.writer import mask_box, mask_to_rle, val_count


def test_rectangle_coverage_is_its_area_fraction_to_a_sub_pixel() -> None:
    drawn = coverage([np.array([[1.3, 1.0], [3.65, 1.0], [3.65, 2.0], [1.3, 2.0]])], 4, 6)
    assert (drawn.top, drawn.left, drawn.alpha.shape) == (1, 1, (1, 3))
    exact = np.array([[0.7, 1.0, 0.65]])  # the part of pixels 1, 2, 3 of row 1 inside x in [1.3, 3.65]
    assert np.abs(drawn.alpha - exact).max() <= 1 / SUPERSAMPLE
    rows, cols = drawn.mask(4, 6).nonzero()
    assert rows.tolist() == [1, 1, 1] and cols.tolist() == [1, 2, 3]
    assert mask_box(drawn.mask(4, 6)) == [1.0, 1.0, 3.0, 1.0]


def test_integer_square_is_exact() -> None:
    drawn = coverage([np.array([[2.0, 3.0], [6.0, 3.0], [6.0, 8.0], [2.0, 8.0]])], 10, 10)
    expected = np.zeros((10, 10), dtype=bool)
    expected[3:8, 2:6] = True  # x in [2, 6), y in [3, 8)
    np.testing.assert_array_equal(drawn.alpha, np.ones((5, 4)))
    np.testing.assert_array_equal(drawn.mask(10, 10), expected)
    assert mask_box(drawn.mask(10, 10)) == [2.0, 3.0, 4.0, 5.0]


def test_circle_area_and_centre() -> None:
    drawn = coverage([polygon_circle(20.0, 15.0, 10.0)], 40, 40)
    full = np.zeros((40, 40))
    full[drawn.top : drawn.top + drawn.alpha.shape[0], drawn.left : drawn.left + drawn.alpha.shape[1]] = drawn.alpha
    # The polygon has n = 31 sides: area n/2 r^2 sin(2 pi / n), perimeter 2 n r sin(pi / n). Its edges sit up to
    # one sub-pixel out (draw.py), so the covered area exceeds the polygon's by at most perimeter / SUPERSAMPLE.
    n = max(16, int(2 * math.pi * 10.0 / 2))
    area, perimeter = n / 2 * 100 * math.sin(2 * math.pi / n), 2 * n * 10 * math.sin(math.pi / n)
    assert area <= full.sum() <= area + perimeter / SUPERSAMPLE
    ys, xs = np.mgrid[0:40, 0:40] + 0.5  # pixel centres
    assert (full * xs).sum() / full.sum() == pytest.approx(20.0, abs=0.02)
    assert (full * ys).sum() / full.sum() == pytest.approx(15.0, abs=0.02)
    # Pixel centres j + 0.5 inside the circle: columns 10..29, rows 5..24.
    assert mask_box(drawn.mask(40, 40)) == [10.0, 5.0, 20.0, 20.0]


def test_shape_outside_the_image_is_empty() -> None:
    drawn = coverage([polygon_circle(-20.0, -20.0, 5.0)], 10, 10)
    assert drawn.alpha.size == 0 and not drawn.mask(10, 10).any()
    image = np.zeros((10, 10, 3), dtype=np.float32)
    paint(image, drawn, (255.0, 0.0, 0.0))
    assert not image.any()


def test_paint_blends_by_coverage() -> None:
    image = np.full((4, 6, 3), 100.0, dtype=np.float32)
    drawn = coverage([np.array([[1.0, 1.0], [3.65, 1.0], [3.65, 2.0], [1.0, 2.0]])], 4, 6)
    alpha = drawn.alpha[0, 2]
    paint(image, drawn, (200.0, 0.0, 100.0))
    assert image[1, 1].tolist() == [200.0, 0.0, 100.0]
    np.testing.assert_allclose(image[1, 3], [100 + 100 * alpha, 100 - 100 * alpha, 100.0], rtol=1e-6)
    assert image[0, 0].tolist() == [100.0, 100.0, 100.0]


def test_star_and_capsule_geometry() -> None:
    star = polygon_regular(0.0, 0.0, 10.0, 5, 0.0, inner=0.5)
    radii = np.hypot(star[:, 0], star[:, 1])
    np.testing.assert_allclose(radii, [10.0, 5.0] * 5)
    body, start, end = capsule(np.array([0.0, 0.0]), np.array([10.0, 0.0]), 2.0)
    np.testing.assert_allclose(body, [[0, 2], [10, 2], [10, -2], [0, -2]], atol=1e-12)
    assert np.hypot(*(end - [10.0, 0.0]).T).max() == pytest.approx(2.0)
    assert np.hypot(*(start - [0.0, 0.0]).T).max() == pytest.approx(2.0)


def test_rle_round_trip_and_val_count() -> None:
    from faster_coco_eval.core import mask as coco_mask

    mask = np.zeros((5, 7), dtype=bool)
    mask[1:4, 2:6] = True
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [5, 7]
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    assert [val_count(n, 0.2) for n in (1, 3, 4, 10)] == [0, 1, 1, 2]
