"""sightkit.ops.boxes: conversion, area and the IoU family, pairwise and element-wise."""

import math

import pytest
import torch
import torchvision.ops as tv
from hypothesis import given, settings
from hypothesis import strategies as st

from sightkit import ops

PAIRWISE = ("box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou")


def random_boxes(n: int, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None) -> torch.Tensor:
    """Valid xyxy boxes (x1 < x2, y1 < y2) in a 100-unit square, from tiny to large."""
    xy = torch.rand(n, 2, dtype=dtype, generator=generator) * 100
    wh = torch.rand(n, 2, dtype=dtype, generator=generator) * 60 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def pairwise(name: str):
    return getattr(ops, name)


def elementwise(name: str):
    return getattr(ops, f"elementwise_{name}")


# --- box_convert and box_area -------------------------------------------------------------


def test_box_convert_hand_values() -> None:
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 8.0]])
    xywh = torch.tensor([[1.0, 2.0, 4.0, 6.0]])
    cxcywh = torch.tensor([[3.0, 5.0, 4.0, 6.0]])
    formats = {"xyxy": xyxy, "xywh": xywh, "cxcywh": cxcywh}
    for in_fmt, boxes in formats.items():
        for out_fmt, expected in formats.items():
            torch.testing.assert_close(ops.box_convert(boxes, in_fmt, out_fmt), expected)


@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_convert_matches_torchvision(in_fmt: str, out_fmt: str) -> None:
    boxes = random_boxes(50)
    torch.testing.assert_close(ops.box_convert(boxes, in_fmt, out_fmt), tv.box_convert(boxes, in_fmt, out_fmt))


def test_box_convert_keeps_batch_shape_dtype_and_does_not_alias() -> None:
    boxes = random_boxes(6, torch.float64).reshape(2, 3, 4)
    out = ops.box_convert(boxes, "xyxy", "cxcywh")
    assert out.dtype == torch.float64
    torch.testing.assert_close(ops.box_convert(out, "cxcywh", "xyxy"), boxes)
    same = ops.box_convert(boxes, "xyxy", "xyxy")
    same[0, 0, 0] = -1.0
    assert boxes[0, 0, 0] != -1.0


def test_box_convert_errors() -> None:
    boxes = random_boxes(2)
    with pytest.raises(ValueError, match=r"in_fmt must be one of .* got 'xyhw'"):
        ops.box_convert(boxes, "xyhw", "xyxy")
    with pytest.raises(ValueError, match=r"out_fmt must be one of .* got 'XYXY'"):
        ops.box_convert(boxes, "xyxy", "XYXY")
    with pytest.raises(ValueError, match=r"boxes must have shape \[\.\.\., 4\], got \(2, 3\)"):
        ops.box_convert(boxes[:, :3], "xyxy", "xywh")
    with pytest.raises(TypeError, match=r"boxes must be a torch\.Tensor .* got list"):
        ops.box_convert([[0, 0, 1, 1]], "xyxy", "xywh")


def test_box_area() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [2.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(ops.box_area(boxes), torch.tensor([6.0, 0.0, -2.0]))
    valid = random_boxes(30)
    torch.testing.assert_close(ops.box_area(valid), tv.box_area(valid))
    assert ops.box_area(torch.tensor([[0, 0, 2, 2]], dtype=torch.int64)).dtype == torch.float32
    with pytest.raises(ValueError, match=r"boxes must have shape \[\.\.\., 4\], got \(5,\)"):
        ops.box_area(torch.zeros(5))


# --- pairwise: values -----------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_matches_torchvision(name: str, dtype: torch.dtype) -> None:
    boxes1, boxes2 = random_boxes(40, dtype), random_boxes(30, dtype)
    boxes2[:5] = boxes1[:5]  # identical pairs, ties in every max/min
    expected = getattr(tv, name)(boxes1, boxes2)
    torch.testing.assert_close(pairwise(name)(boxes1, boxes2), expected)


# A quarter-size box in the corner of another: inter 1, union 4, the enclosing box is the big one.
BIG, QUARTER = [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]
# Unit boxes one unit apart along x: enclosing box 3 x 1, centres 2 apart, diagonal² 10.
LEFT, RIGHT = [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]
# A 2 x 1 box and the unit square in its left half: IoU 1/2, centres 1/2 apart, diagonal² 5.
WIDE, SQUARE = [0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]
V_WIDE = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
ALPHA_WIDE = V_WIDE / (1 - 0.5 + V_WIDE)

HAND_VALUES = {
    # name: (quarter inside big, disjoint, wide vs square)
    "box_iou": (0.25, 0.0, 0.5),
    "generalized_box_iou": (0.25, -1 / 3, 0.5),
    "distance_box_iou": (0.25 - 0.5 / 8, -4 / 10, 0.5 - 0.25 / 5),
    "complete_box_iou": (0.25 - 0.5 / 8, -4 / 10, 0.5 - 0.25 / 5 - ALPHA_WIDE * V_WIDE),
}


@pytest.mark.parametrize("name", PAIRWISE)
def test_hand_derived_values(name: str) -> None:
    boxes1 = torch.tensor([BIG, LEFT, WIDE], dtype=torch.float64)
    boxes2 = torch.tensor([QUARTER, RIGHT, SQUARE], dtype=torch.float64)
    expected = torch.tensor(HAND_VALUES[name], dtype=torch.float64)
    # eps = 1e-7 in c² moves DIoU/CIoU by ~1e-8
    torch.testing.assert_close(pairwise(name)(boxes1, boxes2).diagonal(), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(elementwise(name)(boxes1, boxes2), expected, rtol=0, atol=1e-7)


def test_complete_box_iou_aspect_term_is_nonzero_for_non_square_boxes() -> None:
    boxes1, boxes2 = torch.tensor([WIDE]), torch.tensor([SQUARE])
    diou = ops.distance_box_iou(boxes1, boxes2)
    ciou = ops.complete_box_iou(boxes1, boxes2)
    torch.testing.assert_close(diou - ciou, torch.tensor([[ALPHA_WIDE * V_WIDE]]))


@pytest.mark.parametrize("name", PAIRWISE)
def test_identical_boxes_score_one(name: str) -> None:
    boxes = random_boxes(8, torch.float64)
    torch.testing.assert_close(pairwise(name)(boxes, boxes).diagonal(), torch.ones(8, dtype=torch.float64))


# --- element-wise -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRWISE)
def test_elementwise_is_the_diagonal_of_pairwise(name: str) -> None:
    boxes1, boxes2 = random_boxes(25, torch.float64), random_boxes(25, torch.float64)
    torch.testing.assert_close(elementwise(name)(boxes1, boxes2), pairwise(name)(boxes1, boxes2).diagonal())


@pytest.mark.parametrize("name", PAIRWISE)
def test_elementwise_batch_shapes_and_broadcasting(name: str) -> None:
    boxes1, boxes2 = random_boxes(12).reshape(3, 4, 4), random_boxes(12).reshape(3, 4, 4)
    out = elementwise(name)(boxes1, boxes2)
    torch.testing.assert_close(out.reshape(-1), elementwise(name)(boxes1.reshape(-1, 4), boxes2.reshape(-1, 4)))
    one = boxes2[0, 0]
    torch.testing.assert_close(
        elementwise(name)(boxes1, one), pairwise(name)(boxes1.reshape(-1, 4), one[None])[:, 0].reshape(3, 4)
    )


# --- degenerate boxes -------------------------------------------------------------------------

DEGENERATE = {
    "zero-area apart": ([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 3.0]),
    "zero-area identical": ([2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]),
    "lines identical": ([0.0, 1.0, 4.0, 1.0], [0.0, 1.0, 4.0, 1.0]),
    "identical": ([1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 3.0, 5.0]),
    "inverted": ([3.0, 3.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]),
    "inverted in x": ([3.0, 0.0, 1.0, 2.0], [3.0, 0.0, 1.0, 2.0]),
    "touching": ([0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]),
    "huge": ([-1e15, -1e15, 1e15, 1e15], [0.0, 0.0, 1e15, 2e15]),
}


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_boxes_are_finite_with_finite_gradients(name: str, case: str) -> None:
    first, second = DEGENERATE[case]
    boxes1 = torch.tensor([first], requires_grad=True)
    boxes2 = torch.tensor([second], requires_grad=True)
    value = pairwise(name)(boxes1, boxes2)
    value.sum().backward()
    assert torch.isfinite(value).all(), value
    assert torch.isfinite(boxes1.grad).all() and torch.isfinite(boxes2.grad).all(), (boxes1.grad, boxes2.grad)
    if name in ("box_iou", "generalized_box_iou"):
        assert -1 <= value.item() <= 1


def test_degenerate_values() -> None:
    point = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    assert ops.box_iou(point, point).item() == 0.0  # nothing is covered
    assert ops.generalized_box_iou(point, point).item() == 0.0
    inverted, valid = torch.tensor([[3.0, 3.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert ops.box_iou(inverted, valid).item() == 0.0
    huge = torch.tensor([[0.0, 0.0, 1e15, 1e15]])
    torch.testing.assert_close(ops.box_iou(huge, huge * torch.tensor([1.0, 1.0, 0.5, 1.0])), torch.tensor([[0.5]]))


# --- precision -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRWISE)
def test_half_precision_is_computed_in_float32(name: str) -> None:
    boxes1, boxes2 = random_boxes(10).half(), random_boxes(8).half()
    out = pairwise(name)(boxes1, boxes2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, pairwise(name)(boxes1.float(), boxes2.float()), rtol=0, atol=0)
    assert elementwise(name)(boxes1[:8], boxes2).dtype == torch.float32


def test_mixed_precision_promotes() -> None:
    boxes1, boxes2 = random_boxes(3, torch.float64), random_boxes(2)
    assert ops.box_iou(boxes1, boxes2).dtype == torch.float64
    assert ops.elementwise_box_iou(boxes1[:2], boxes2).dtype == torch.float64


# α is a constant for autograd in CIoU, so its numerical and analytical Jacobians differ by
# design; its gradient is checked against the frozen-α formula below.
@pytest.mark.parametrize("name", PAIRWISE[:3])
def test_gradcheck(name: str) -> None:
    generator = torch.Generator().manual_seed(1)
    boxes1 = random_boxes(4, torch.float64, generator).requires_grad_()
    boxes2 = random_boxes(3, torch.float64, generator).requires_grad_()
    contained = torch.tensor([[10.0, 10.0, 20.0, 30.0], [12.0, 15.0, 18.0, 20.0]], dtype=torch.float64)
    far = torch.tensor([[70.0, 70.0, 80.0, 75.0]], dtype=torch.float64)
    fixed = torch.cat([contained, far]).requires_grad_()
    assert torch.autograd.gradcheck(pairwise(name), (boxes1, boxes2))
    assert torch.autograd.gradcheck(pairwise(name), (fixed, boxes2))
    assert torch.autograd.gradcheck(elementwise(name), (boxes1, boxes2[:1]))


def test_complete_box_iou_gradient_treats_alpha_as_constant() -> None:
    boxes1 = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 1.0, 2.0, 4.0]], dtype=torch.float64, requires_grad=True)
    boxes2 = torch.tensor([[0.5, 0.0, 2.0, 2.0]], dtype=torch.float64)
    with torch.no_grad():
        iou = ops.box_iou(boxes1, boxes2)
        v = 4 / math.pi**2 * (torch.atan(_w(boxes1) / _h(boxes1))[:, None] - torch.atan(_w(boxes2) / _h(boxes2))) ** 2
        alpha = v / (1 - iou + v + 1e-7)
    (grad,) = torch.autograd.grad(ops.complete_box_iou(boxes1, boxes2).sum(), boxes1)
    v_live = 4 / math.pi**2 * (torch.atan(_w(boxes1) / _h(boxes1))[:, None] - torch.atan(_w(boxes2) / _h(boxes2))) ** 2
    reference = ops.distance_box_iou(boxes1, boxes2) - alpha * v_live
    (expected,) = torch.autograd.grad(reference.sum(), boxes1)
    torch.testing.assert_close(grad, expected)
    assert (v > 0.01).all()  # the aspect term is really exercised


def _w(boxes: torch.Tensor) -> torch.Tensor:
    return boxes[:, 2] - boxes[:, 0]


def _h(boxes: torch.Tensor) -> torch.Tensor:
    return boxes[:, 3] - boxes[:, 1]


# --- properties ------------------------------------------------------------------------------

coordinate = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)
side = st.floats(min_value=1e-2, max_value=1e3, allow_nan=False)


@st.composite
def box_pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    boxes = []
    for _ in range(2):
        x, y, w, h = draw(coordinate), draw(coordinate), draw(side), draw(side)
        boxes.append(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float64))
    return boxes[0], boxes[1]


@settings(max_examples=60, deadline=None)
@given(box_pairs())
def test_ranges_and_order(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    boxes1, boxes2 = pair
    iou = ops.box_iou(boxes1, boxes2).item()
    giou = ops.generalized_box_iou(boxes1, boxes2).item()
    diou = ops.distance_box_iou(boxes1, boxes2).item()
    ciou = ops.complete_box_iou(boxes1, boxes2).item()
    assert 0 <= iou <= 1
    assert -1 <= giou <= iou + 1e-12
    assert -1 <= diou <= iou + 1e-12
    assert -2 < ciou <= diou + 1e-12  # α v < 1 takes CIoU below -1 for distant boxes


@settings(max_examples=60, deadline=None)
@given(box_pairs())
def test_symmetry(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    boxes1, boxes2 = pair
    for name in PAIRWISE:
        forward, backward = pairwise(name)(boxes1, boxes2), pairwise(name)(boxes2, boxes1)
        torch.testing.assert_close(forward, backward.T, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(box_pairs(), st.floats(min_value=1e-2, max_value=1e2), coordinate, coordinate)
def test_scale_and_translation_invariance(
    pair: tuple[torch.Tensor, torch.Tensor], scale: float, dx: float, dy: float
) -> None:
    boxes1, boxes2 = pair
    shift = torch.tensor([dx, dy, dx, dy], dtype=torch.float64)
    for name in PAIRWISE:
        # the eps added to c² (DIoU, CIoU) does not scale with the boxes, so it is made negligible
        kwargs = {"eps": 1e-30} if name in ("distance_box_iou", "complete_box_iou") else {}
        moved = pairwise(name)(boxes1 * scale + shift, boxes2 * scale + shift, **kwargs)
        torch.testing.assert_close(moved, pairwise(name)(boxes1, boxes2, **kwargs), rtol=1e-7, atol=1e-7)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRWISE)
def test_errors(name: str) -> None:
    good = random_boxes(3)
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[\.\.\., 4\], got \(3, 5\)"):
        pairwise(name)(torch.zeros(3, 5), good)
    with pytest.raises(ValueError, match=r"boxes2 must have shape \[N, 4\] for a pairwise op, got \(2, 3, 4\)"):
        pairwise(name)(good, torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match=r"boxes2 must be a torch\.Tensor .* got list"):
        pairwise(name)(good, [[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"matched pairs .* got \(3, 4\) and \(2, 4\)"):
        elementwise(name)(good, good[:2])
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[\.\.\., 4\], got \(\)"):
        elementwise(name)(torch.tensor(1.0), good)


def test_empty_inputs() -> None:
    empty, boxes = torch.zeros(0, 4), random_boxes(3)
    for name in PAIRWISE:
        assert pairwise(name)(empty, boxes).shape == (0, 3)
        assert pairwise(name)(boxes, empty).shape == (3, 0)
        assert elementwise(name)(empty, empty).shape == (0,)
