"""sightkit.losses.iou: the IoU-family losses, their hand-derived backward and their modules."""

import math
import warnings

import pytest
import torch
import torchvision.ops as tv

from sightkit import losses
from sightkit.losses import iou as iou_module
from sightkit.ops.boxes import aspect_angle

EPS = 1e-7
KINDS = ("linear", "square", "log", "giou", "diou", "ciou")
MODULES = {
    "linear": lambda **kw: losses.IoULoss(mode="linear", **kw),
    "square": lambda **kw: losses.IoULoss(mode="square", **kw),
    "log": lambda **kw: losses.IoULoss(mode="log", **kw),
    "giou": losses.GIoULoss,
    "diou": losses.DIoULoss,
    "ciou": losses.CIoULoss,
}


def loss_fn(kind: str):
    """The sightkit loss function of ``kind``, as ``fn(boxes1, boxes2, reduction=..., eps=...)``."""
    if kind in losses.iou.IOU_LOSS_MODES:
        return lambda boxes1, boxes2, **kw: losses.box_iou_loss(boxes1, boxes2, mode=kind, **kw)
    return {
        "giou": losses.generalized_box_iou_loss,
        "diou": losses.distance_box_iou_loss,
        "ciou": losses.complete_box_iou_loss,
    }[kind]


def reference_fn(kind: str):
    """torchvision's loss, or for the IoU loss the same formula written with autograd ops
    (torchvision's masked intersection, so that the subgradients are torchvision's too)."""
    if kind in ("giou", "diou", "ciou"):
        return {
            "giou": tv.generalized_box_iou_loss,
            "diou": tv.distance_box_iou_loss,
            "ciou": tv.complete_box_iou_loss,
        }[kind]

    def reference(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
        iw = torch.min(boxes1[:, 2], boxes2[:, 2]) - torch.max(boxes1[:, 0], boxes2[:, 0])
        ih = torch.min(boxes1[:, 3], boxes2[:, 3]) - torch.max(boxes1[:, 1], boxes2[:, 1])
        inter = torch.where((iw > 0) & (ih > 0), iw * ih, 0.0)
        union = box_area(boxes1) + box_area(boxes2) - inter
        iou = inter / (union + EPS)
        return {"linear": 1 - iou, "square": 1 - iou**2, "log": -iou.clamp(min=EPS).log()}[kind]

    return reference


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def random_boxes(n: int, dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None) -> torch.Tensor:
    xy = torch.rand(n, 2, dtype=dtype, generator=generator) * 20
    wh = torch.rand(n, 2, dtype=dtype, generator=generator) * 12 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def mixed_pairs(dtype: torch.dtype = torch.float64, n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pairs (overlapping and disjoint), then containing, identical and tied pairs."""
    generator = torch.Generator().manual_seed(seed)
    boxes1, boxes2 = random_boxes(n, dtype, generator), random_boxes(n, dtype, generator)
    fixed1 = torch.tensor(
        [[0, 0, 10, 10], [2, 2, 4, 8], [0, 0, 3, 2], [1, 1, 5, 4], [0, 0, 4, 4], [0, 0, 2, 6]], dtype=dtype
    )
    fixed2 = torch.tensor(
        [[2, 3, 5, 7], [0, 0, 10, 10], [6, 5, 8, 9], [1, 1, 5, 4], [0, 0, 2, 6], [0, 0, 4, 4]], dtype=dtype
    )
    return torch.cat([boxes1, fixed1]), torch.cat([boxes2, fixed2])


# --- values ----------------------------------------------------------------------------------

BIG, QUARTER = [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]  # IoU 1/4, enclosing box = BIG
LEFT, RIGHT = [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]  # disjoint: C = 3, U = 2, ρ² = 4, c² = 10
WIDE, SQUARE = [0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]  # IoU 1/2, ρ² = 1/4, c² = 5
V_WIDE = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
ALPHA_WIDE = V_WIDE / (1 - 0.5 + V_WIDE)

HAND_VALUES = {
    # kind: (quarter in big, disjoint, wide vs square)
    "linear": (0.75, 1.0, 0.5),
    "square": (1 - 1 / 16, 1.0, 0.75),
    "log": (math.log(4), -math.log(EPS), math.log(2)),
    "giou": (0.75, 1 + 1 / 3, 0.5),
    "diou": (0.75 + 0.5 / 8, 1 + 4 / 10, 0.5 + 0.25 / 5),
    "ciou": (0.75 + 0.5 / 8, 1 + 4 / 10, 0.5 + 0.25 / 5 + ALPHA_WIDE * V_WIDE),
}


@pytest.mark.parametrize("kind", KINDS)
def test_hand_derived_values(kind: str) -> None:
    boxes1 = torch.tensor([BIG, LEFT, WIDE], dtype=torch.float64)
    boxes2 = torch.tensor([QUARTER, RIGHT, SQUARE], dtype=torch.float64)
    expected = torch.tensor(HAND_VALUES[kind], dtype=torch.float64)
    # eps = 1e-7 in the denominators moves the values by less than 1e-7
    torch.testing.assert_close(loss_fn(kind)(boxes1, boxes2), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(loss_fn(kind)(boxes2, boxes1), expected, rtol=0, atol=1e-7)  # symmetric


def test_ciou_aspect_term_by_hand() -> None:
    """The 2 x 1 box against the unit square, every term written out."""
    iou = 1 / (2 + EPS)
    diou_penalty = 0.25 / (5 + EPS)
    v = 4 / math.pi**2 * math.atan(1 / 3) ** 2  # atan 2 - atan 1 = atan 1/3
    alpha = v / (1 - iou + v + EPS)
    expected = 1 - iou + diou_penalty + alpha * v
    value = losses.complete_box_iou_loss(torch.tensor([WIDE], dtype=torch.float64), torch.tensor([SQUARE]))
    assert v > 0.03
    assert value.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_match_reference(kind: str, dtype: torch.dtype) -> None:
    boxes1, boxes2 = mixed_pairs(dtype)
    weights = torch.rand(len(boxes1), dtype=dtype)
    results = []
    for fn in (loss_fn(kind), reference_fn(kind)):
        first, second = boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()
        loss = fn(first, second)
        (loss * weights).sum().backward()
        results.append((loss.detach(), first.grad, second.grad))
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    for ours, expected in zip(*results, strict=True):
        torch.testing.assert_close(ours, expected, **tolerance)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_of_one_input(kind: str) -> None:
    boxes1, boxes2 = mixed_pairs(seed=1)
    target = boxes2.clone().requires_grad_()
    loss_fn(kind)(boxes1, target).sum().backward()
    expected_target = boxes2.clone().requires_grad_()
    reference_fn(kind)(boxes1, expected_target).sum().backward()
    torch.testing.assert_close(target.grad, expected_target.grad)


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "ciou"])
def test_gradcheck(kind: str) -> None:
    boxes1, boxes2 = mixed_pairs(n=6, seed=2)
    # gradcheck's finite differences need a margin from the kinks (ties, touching edges)
    boxes1, boxes2 = boxes1[:-3], boxes2[:-3]
    assert torch.autograd.gradcheck(loss_fn(kind), (boxes1.requires_grad_(), boxes2.requires_grad_()))


def test_ciou_gradient_is_the_frozen_alpha_derivative() -> None:
    """CIoU's α is a constant for autograd, so its gradient is that of DIoU + α₀ v with α₀
    frozen at the point; compared with central differences of that function."""
    boxes1, boxes2 = mixed_pairs(n=6, seed=3)
    boxes1, boxes2 = boxes1[:-3], boxes2[:-3]

    def aspect(boxes: torch.Tensor) -> torch.Tensor:
        return aspect_angle(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])

    def v_of(first: torch.Tensor) -> torch.Tensor:
        return 4 / math.pi**2 * (aspect(first) - aspect(boxes2)) ** 2

    iou = 1 - losses.box_iou_loss(boxes1, boxes2)
    alpha = v_of(boxes1) / (1 - iou + v_of(boxes1) + EPS)
    assert (v_of(boxes1) > 1e-3).all()

    def frozen(first: torch.Tensor) -> torch.Tensor:
        return (losses.distance_box_iou_loss(first, boxes2) + alpha * v_of(first)).sum()

    step = 1e-6
    numerical = torch.zeros_like(boxes1)
    for index in range(boxes1.numel()):
        delta = torch.zeros_like(boxes1).view(-1)
        delta[index] = step
        delta = delta.view_as(boxes1)
        numerical.view(-1)[index] = (frozen(boxes1 + delta) - frozen(boxes1 - delta)) / (2 * step)
    first = boxes1.clone().requires_grad_()
    losses.complete_box_iou_loss(first, boxes2).sum().backward()
    torch.testing.assert_close(first.grad, numerical, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_boxes_have_zero_gradient(kind: str) -> None:
    """Identical boxes are the minimum; ties split the gradient of max/min evenly, which
    makes the subgradient there exactly zero."""
    boxes = random_boxes(5, generator=torch.Generator().manual_seed(4))
    first, second = boxes.clone().requires_grad_(), boxes.clone().requires_grad_()
    loss = loss_fn(kind)(first, second)
    loss.sum().backward()
    torch.testing.assert_close(first.grad, torch.zeros_like(boxes), rtol=0, atol=1e-6)
    torch.testing.assert_close(second.grad, torch.zeros_like(boxes), rtol=0, atol=1e-6)
    assert loss.max().item() < 1e-6


DEGENERATE = {
    "point vs box": ([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 3.0]),
    "identical points": ([2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]),
    "identical lines": ([0.0, 1.0, 4.0, 1.0], [0.0, 1.0, 4.0, 1.0]),
    "vertical line": ([1.0, 0.0, 1.0, 3.0], [0.0, 0.0, 2.0, 2.0]),
    "inverted": ([3.0, 3.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]),
    "both inverted": ([3.0, 0.0, 1.0, 2.0], [3.0, 0.0, 1.0, 2.0]),
    "touching": ([0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]),
    "huge": ([-1e15, -1e15, 1e15, 1e15], [0.0, 0.0, 1e15, 2e15]),
    "tiny": ([0.0, 0.0, 1e-20, 1e-20], [0.0, 0.0, 2e-20, 1e-20]),
}


@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_boxes_give_finite_values_and_gradients(kind: str) -> None:
    boxes1 = torch.tensor([first for first, _ in DEGENERATE.values()], requires_grad=True)
    boxes2 = torch.tensor([second for _, second in DEGENERATE.values()], requires_grad=True)
    loss = loss_fn(kind)(boxes1, boxes2)
    loss.sum().backward()
    for name, value, grad1, grad2 in zip(DEGENERATE, loss, boxes1.grad, boxes2.grad, strict=True):
        assert torch.isfinite(value), (name, value)
        assert torch.isfinite(grad1).all() and torch.isfinite(grad2).all(), (name, grad1, grad2)


def test_degenerate_values() -> None:
    points = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    assert losses.box_iou_loss(points, points).item() == 1.0  # a point covers nothing
    assert losses.box_iou_loss(points, points, mode="log").item() == pytest.approx(-math.log(EPS))
    assert losses.generalized_box_iou_loss(points, points).item() == 1.0
    huge1, huge2 = torch.tensor([[0.0, 0.0, 2e15, 2e15]]), torch.tensor([[0.0, 0.0, 1e15, 1e15]])
    assert losses.generalized_box_iou_loss(huge1, huge2).item() == pytest.approx(0.75)


def test_log_mode_has_no_gradient_below_eps() -> None:
    first = torch.tensor([LEFT], requires_grad=True)
    loss = losses.box_iou_loss(first, torch.tensor([RIGHT]), mode="log")
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(EPS))
    assert (first.grad == 0).all()


# --- shapes, reductions, precision, blocks --------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_input_reduces_to_zero_with_a_gradient_path(kind: str, reduction: str) -> None:
    boxes1, boxes2 = torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 4)
    loss = loss_fn(kind)(boxes1, boxes2, reduction=reduction)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    torch.testing.assert_close(boxes1.grad, torch.zeros(0, 4))
    assert loss_fn(kind)(boxes1, boxes2).shape == (0,)


@pytest.mark.parametrize("kind", KINDS)
def test_reductions(kind: str) -> None:
    boxes1, boxes2 = mixed_pairs()
    none = loss_fn(kind)(boxes1, boxes2)
    torch.testing.assert_close(loss_fn(kind)(boxes1, boxes2, reduction="mean"), none.mean())
    torch.testing.assert_close(loss_fn(kind)(boxes1, boxes2, reduction="sum"), none.sum())


@pytest.mark.parametrize("kind", KINDS)
def test_batch_shapes_and_broadcasting(kind: str) -> None:
    boxes1, boxes2 = mixed_pairs(n=18)
    flat = loss_fn(kind)(boxes1, boxes2)
    torch.testing.assert_close(loss_fn(kind)(boxes1.reshape(3, 8, 4), boxes2.reshape(3, 8, 4)), flat.reshape(3, 8))

    target = boxes2[0].clone().requires_grad_()
    loss_fn(kind)(boxes1, target).sum().backward()
    expanded = boxes2[0].clone().requires_grad_()
    loss_fn(kind)(boxes1, expanded.expand_as(boxes1).clone()).sum().backward()
    torch.testing.assert_close(target.grad, expanded.grad)


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_give_the_same_result(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    boxes1, boxes2 = mixed_pairs(n=17)
    results = []
    for block in (1 << 20, 5):
        monkeypatch.setattr(iou_module, "_CPU_BLOCK", block)
        first, second = boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()
        loss = loss_fn(kind)(first, second)
        (loss * torch.arange(len(loss))).sum().backward()
        results.append((loss.detach(), first.grad, second.grad))
    for single, blocked in zip(*results, strict=True):
        torch.testing.assert_close(blocked, single, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_is_computed_in_float32(kind: str) -> None:
    boxes1, boxes2 = (boxes.half() for boxes in mixed_pairs(torch.float32))
    first = boxes1.clone().requires_grad_()
    loss = loss_fn(kind)(first, boxes2)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_fn(kind)(boxes1.float(), boxes2.float()), rtol=0, atol=0)
    loss.sum().backward()
    assert first.grad.dtype == torch.float16
    expected = boxes1.float().requires_grad_()
    loss_fn(kind)(expected, boxes2.float()).sum().backward()
    torch.testing.assert_close(first.grad, expected.grad.half())


def test_double_backward_is_refused() -> None:
    """The backward is first-order only: a second derivative raises instead of being wrong."""
    first = torch.tensor([WIDE], dtype=torch.float64, requires_grad=True)
    loss = losses.generalized_box_iou_loss(first, first.detach() + 0.5)
    (grad,) = torch.autograd.grad(loss, first, create_graph=True)
    with pytest.raises(RuntimeError, match=r"does not require grad|once_differentiable"):
        grad.sum().backward()


# --- the generated (torch.compile) kernels -------------------------------------------------------


def _step(kind: str, boxes1: torch.Tensor, boxes2: torch.Tensor, weights: torch.Tensor, fn=None):
    first, second = boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()
    loss = (fn or loss_fn(kind))(first, second)
    (loss * weights).sum().backward()
    return loss.detach(), first.grad, second.grad


@pytest.mark.slow
def test_fused_kernels_match_reference_and_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled kernels (forced on at any size) agree with torchvision and with the eager
    kernels. Compiling takes seconds (20 s with inductor's first import), hence one kind:
    CIoU, whose kernels go through every part of the geometry that the others use."""
    kind = "ciou"
    monkeypatch.setattr(iou_module, "_FUSED_MIN_PAIRS", 1)
    monkeypatch.setattr(iou_module, "_FUSED_KERNELS", {})
    monkeypatch.setattr(iou_module, "_FUSED_FAILURES", [])
    boxes1, boxes2 = mixed_pairs(torch.float32, n=200)
    weights = torch.rand(len(boxes1))
    fused = _step(kind, boxes1, boxes2, weights)
    assert set(iou_module._FUSED_KERNELS) == {iou_module._loss_kernel, iou_module._grad_kernel}
    assert iou_module._FUSED_FAILURES == []
    reference = _step(kind, boxes1, boxes2, weights, reference_fn(kind))
    monkeypatch.setenv("SIGHTKIT_COMPILE", "0")
    eager = _step(kind, boxes1, boxes2, weights)
    for ours, expected, plain in zip(fused, reference, eager, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours, plain, rtol=1e-6, atol=1e-6)


def _failing_compiled(*args: object) -> None:
    raise RuntimeError("no compiler here")


def test_failed_compilation_falls_back_to_eager_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iou_module, "_FUSED_MIN_PAIRS", 1)
    kernels = {iou_module._loss_kernel: _failing_compiled, iou_module._grad_kernel: _failing_compiled}
    monkeypatch.setattr(iou_module, "_FUSED_KERNELS", kernels)
    monkeypatch.setattr(iou_module, "_FUSED_FAILURES", [])
    boxes1, boxes2 = mixed_pairs(torch.float32)
    weights = torch.rand(len(boxes1))
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no compiler here\)"):
        first = _step("diou", boxes1, boxes2, weights)
    assert iou_module._FUSED_FAILURES == ["RuntimeError: no compiler here"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the process stays eager: no second attempt, no second warning
        second = _step("diou", boxes1, boxes2, weights)
    reference = _step("diou", boxes1, boxes2, weights, reference_fn("diou"))
    for fallback, again, expected in zip(first, second, reference, strict=True):
        torch.testing.assert_close(fallback, expected)
        torch.testing.assert_close(again, fallback, rtol=0, atol=0)


def test_fused_kernels_are_skipped_when_switched_off_small_or_not_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = {iou_module._loss_kernel: _failing_compiled, iou_module._grad_kernel: _failing_compiled}
    monkeypatch.setattr(iou_module, "_FUSED_KERNELS", kernels)
    monkeypatch.setattr(iou_module, "_FUSED_FAILURES", [])
    boxes1, boxes2 = mixed_pairs(torch.float32, n=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a call to the failing kernels would warn
        monkeypatch.setattr(iou_module, "_FUSED_MIN_PAIRS", len(boxes1) + 1)
        _step("giou", boxes1, boxes2, torch.ones(len(boxes1)))  # below the threshold
        monkeypatch.setattr(iou_module, "_FUSED_MIN_PAIRS", 1)
        _step("giou", boxes1.double(), boxes2.double(), torch.ones(len(boxes1)))  # float64
        monkeypatch.setenv("SIGHTKIT_COMPILE", "0")
        _step("giou", boxes1, boxes2, torch.ones(len(boxes1)))
    assert iou_module._FUSED_FAILURES == []


# --- modules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_equals_functional(kind: str, reduction: str) -> None:
    boxes1, boxes2 = mixed_pairs()
    module = MODULES[kind](reduction=reduction, eps=1e-6, loss_weight=2.5)
    expected = 2.5 * loss_fn(kind)(boxes1, boxes2, reduction=reduction, eps=1e-6)
    torch.testing.assert_close(module(boxes1, boxes2), expected)
    assert "loss_weight=2.5" in repr(module) and f"reduction={reduction!r}" in repr(module)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_errors(kind: str) -> None:
    good = random_boxes(3)
    fn = loss_fn(kind)
    with pytest.raises(ValueError, match=r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"):
        fn(good, good, reduction="avg")
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[\.\.\., 4\], got \(3, 3\)"):
        fn(good[:, :3], good)
    with pytest.raises(TypeError, match=r"boxes2 must be a torch\.Tensor .* got list"):
        fn(good, [[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"matched pairs .* got \(3, 4\) and \(2, 4\)"):
        fn(good, good[:2])
    with pytest.raises(ValueError, match=r"eps must be a number >= 0, got -1"):
        fn(good, good, eps=-1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        MODULES[kind](reduction="avg")
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        MODULES[kind](eps=float("nan"))
    with pytest.raises(TypeError, match="loss_weight must be a number, got str"):
        MODULES[kind](loss_weight="1")


def test_mode_errors() -> None:
    good = random_boxes(2)
    with pytest.raises(ValueError, match=r"mode must be one of \('linear', 'square', 'log'\), got 'cubic'"):
        losses.box_iou_loss(good, good, mode="cubic")
    with pytest.raises(ValueError, match="mode must be one of"):
        losses.IoULoss(mode="Linear")
