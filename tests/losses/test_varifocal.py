"""varifocal_loss / VarifocalLoss: the paper's two cases by hand and against a plain formula, stability, errors."""

import math

import pytest
import torch

from sightkit.losses import VarifocalLoss, varifocal_loss


def _data(n: int = 64, dtype: torch.dtype = torch.float32):
    """Logits and IoU-aware targets: about a quarter positives with q in (0, 1], the rest 0."""
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(n, 4, generator=g) * 3).to(dtype)
    positive = torch.rand(n, 4, generator=g) < 0.25
    targets = torch.where(positive, torch.rand(n, 4, generator=g).clamp(min=0.05), 0.0).to(dtype)
    return inputs, targets


def reference(inputs, targets, alpha=0.75, gamma=2.0, iou_weighted=True):
    """The paper's equation written directly in float64 (fine for moderate logits)."""
    p = torch.sigmoid(inputs.double())
    q = targets.double()
    bce = -(q * torch.log(p) + (1 - q) * torch.log(1 - p))
    positive_weight = q if iou_weighted else torch.ones_like(q)
    return torch.where(q > 0, positive_weight * bce, alpha * p**gamma * -torch.log(1 - p))


@pytest.mark.parametrize("iou_weighted", [True, False])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 2.0), (0.25, 0.0), (1.0, 1.5)])
def test_equals_the_paper_equation(iou_weighted, alpha, gamma) -> None:
    inputs, targets = _data()
    expected = reference(inputs, targets, alpha, gamma, iou_weighted).float()
    torch.testing.assert_close(varifocal_loss(inputs, targets, alpha, gamma, iou_weighted), expected)


def test_all_negatives_is_focal_weighted_bce() -> None:
    inputs, _ = _data()
    targets = torch.zeros_like(inputs)
    p = torch.sigmoid(inputs.double())
    expected = (
        0.75
        * p**2
        * torch.nn.functional.binary_cross_entropy_with_logits(inputs.double(), targets.double(), reduction="none")
    )
    torch.testing.assert_close(varifocal_loss(inputs, targets), expected.float())


def test_by_hand() -> None:
    # Positive x = 0, q = 0.6: p = 1/2, BCE = -(0.6 log 1/2 + 0.4 log 1/2) = log 2, weight q = 0.6.
    # Negative x = log 3, q = 0: p = 3/4, BCE = -log(1/4) = log 4, weight 0.75 * (3/4)^2.
    inputs = torch.tensor([0.0, math.log(3)], dtype=torch.float64)
    targets = torch.tensor([0.6, 0.0], dtype=torch.float64)
    negative = 0.75 * 9 / 16 * math.log(4)
    expected = torch.tensor([0.6 * math.log(2), negative], dtype=torch.float64)
    torch.testing.assert_close(varifocal_loss(inputs, targets), expected)
    unweighted = torch.tensor([math.log(2), negative], dtype=torch.float64)
    torch.testing.assert_close(varifocal_loss(inputs, targets, iou_weighted=False), unweighted)
    torch.testing.assert_close(varifocal_loss(inputs, targets, reduction="mean"), expected.mean())
    torch.testing.assert_close(varifocal_loss(inputs, targets, reduction="sum"), expected.sum())


def test_targets_are_constants() -> None:
    inputs, targets = _data(n=8, dtype=torch.float64)
    inputs.requires_grad_()
    targets.requires_grad_()
    loss = varifocal_loss(inputs, targets).sum()
    (grad,) = torch.autograd.grad(loss, inputs)
    assert targets.grad is None
    # The gradient is that of the paper's loss with q held fixed.
    detached = inputs.detach().requires_grad_()
    (expected,) = torch.autograd.grad(reference(detached, targets.detach()).sum(), detached)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradcheck(gamma) -> None:
    inputs, targets = _data(n=6, dtype=torch.float64)
    inputs.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: varifocal_loss(x, targets, 0.75, gamma), (inputs,))
    assert torch.autograd.gradgradcheck(lambda x: varifocal_loss(x, targets, 0.75, gamma), (inputs,))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_logits_stay_finite(gamma, dtype) -> None:
    inputs = torch.tensor([-100.0, 100.0, -100.0, 100.0], dtype=dtype, requires_grad=True)
    targets = torch.tensor([0.0, 0.0, 0.8, 0.8], dtype=dtype)
    loss = varifocal_loss(inputs, targets, gamma=gamma)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(inputs.grad).all()
    # A confident negative costs ~0; a negative at +100 costs alpha * 100; a positive at -100
    # costs q * q * 100 (its BCE is q * 100); at +100 it costs q * (1 - q) * 100.
    expected = torch.tensor([0.0, 75.0, 0.8 * 0.8 * 100, 0.8 * 0.2 * 100])
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-3, atol=1e-3)


def test_half_inputs_are_computed_in_float32() -> None:
    inputs, targets = _data()
    half = varifocal_loss(inputs.half(), targets.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, varifocal_loss(inputs.half().float(), targets.half().float()))


def test_empty_input_gives_zero_with_gradient() -> None:
    inputs = torch.zeros(0, 3, requires_grad=True)
    for reduction in ("mean", "sum"):
        loss = varifocal_loss(inputs, torch.zeros(0, 3), reduction=reduction)
        assert loss.item() == 0.0
        loss.backward()
        assert inputs.grad is not None and inputs.grad.shape == (0, 3)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_equals_functional(reduction) -> None:
    inputs, targets = _data()
    module = VarifocalLoss(alpha=0.5, gamma=1.0, iou_weighted=False, reduction=reduction, loss_weight=3.0)
    expected = 3.0 * varifocal_loss(inputs, targets, 0.5, 1.0, False, reduction)
    torch.testing.assert_close(module(inputs, targets), expected)
    assert "iou_weighted=False" in repr(module)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"alpha": -0.5}, ValueError, r"alpha must be in \[0.0, inf\], got -0.5"),
        ({"gamma": -1.0}, ValueError, r"gamma must be in \[0.0, inf\], got -1.0"),
        ({"iou_weighted": 1}, TypeError, "iou_weighted must be a bool, got int"),
        ({"targets": torch.zeros(2, 2)}, ValueError, r"targets must have the shape of inputs \(4,\), got \(2, 2\)"),
        ({"targets": torch.tensor([0.0, 0.5, -0.1, 0.0])}, ValueError, r"targets must lie in \[0, 1\]"),
        ({"inputs": torch.zeros(4, dtype=torch.bool)}, TypeError, "inputs must be a floating-point tensor"),
    ],
)
def test_bad_input_is_an_error(kwargs, error, match) -> None:
    call = {"inputs": torch.zeros(4), "targets": torch.tensor([0.0, 0.5, 0.9, 0.0]), **kwargs}
    with pytest.raises(error, match=match):
        varifocal_loss(**call)


def test_module_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        VarifocalLoss(alpha=-1.0)
    with pytest.raises(TypeError, match="iou_weighted must be a bool"):
        VarifocalLoss(iou_weighted="yes")
