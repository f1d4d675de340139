"""sigmoid_focal_loss / FocalLoss: torchvision's values, BCE at gamma=0, hand values, stability, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from sightkit.losses import FocalLoss, sigmoid_focal_loss


def _data(n: int = 64, soft: bool = False, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(n, 3, generator=g) * 4).to(dtype)
    targets = torch.rand(n, 3, generator=g) if soft else (torch.rand(n, 3, generator=g) > 0.7).float()
    return inputs, targets.to(dtype)


@pytest.mark.parametrize("alpha", [0.25, 0.0, 1.0, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("soft", [False, True])
def test_equals_torchvision_values_and_gradients(alpha, gamma, soft) -> None:
    inputs, targets = _data(soft=soft)
    ours_in = inputs.clone().requires_grad_()
    theirs_in = inputs.clone().requires_grad_()
    ours = sigmoid_focal_loss(ours_in, targets, alpha, gamma)
    theirs = torchvision.ops.sigmoid_focal_loss(theirs_in, targets, alpha, gamma)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-4, atol=1e-6)
    for reduction in ("mean", "sum"):
        expected = torchvision.ops.sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction)
        torch.testing.assert_close(sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction), expected)


def test_gamma_zero_without_alpha_is_bce() -> None:
    inputs, targets = _data(soft=True)
    expected = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(inputs, targets, alpha=-1, gamma=0), expected)


def test_by_hand() -> None:
    # x = 0, t = 1: p_t = 1/2, -log p_t = log 2, (1 - p_t)^2 = 1/4, alpha_t = 0.25.
    # x = log 3, t = 0: p = 3/4, p_t = 1/4, -log p_t = log 4, (1 - p_t)^2 = 9/16, alpha_t = 0.75.
    inputs = torch.tensor([0.0, math.log(3)], dtype=torch.float64)
    targets = torch.tensor([1.0, 0.0], dtype=torch.float64)
    expected = torch.tensor([0.25 * 0.25 * math.log(2), 0.75 * 9 / 16 * math.log(4)], dtype=torch.float64)
    torch.testing.assert_close(sigmoid_focal_loss(inputs, targets), expected)
    torch.testing.assert_close(sigmoid_focal_loss(inputs, targets, reduction="sum"), expected.sum())
    torch.testing.assert_close(sigmoid_focal_loss(inputs, targets, reduction="mean"), expected.mean())


@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("soft", [False, True])
def test_gradcheck(gamma, soft) -> None:
    inputs, targets = _data(n=6, soft=soft, dtype=torch.float64)
    inputs.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss(x, targets, 0.25, gamma), (inputs,))
    assert torch.autograd.gradgradcheck(lambda x: sigmoid_focal_loss(x, targets, 0.25, gamma), (inputs,))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_logits_stay_finite(gamma, dtype) -> None:
    inputs = torch.tensor([-100.0, 100.0, -100.0, 100.0, -100.0, 100.0], dtype=dtype, requires_grad=True)
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.3, 0.3], dtype=dtype)
    loss = sigmoid_focal_loss(inputs, targets, gamma=gamma)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(inputs.grad).all()
    # Confidently right costs ~0; confidently wrong costs ~alpha_t * 100.
    torch.testing.assert_close(loss[:4].detach(), torch.tensor([0.0, 0.0, 25.0, 75.0]), atol=1e-3, rtol=1e-4)


def test_half_inputs_are_computed_in_float32() -> None:
    inputs, targets = _data()
    half = sigmoid_focal_loss(inputs.half(), targets.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, sigmoid_focal_loss(inputs.half().float(), targets))


def test_empty_input_gives_zero_with_gradient() -> None:
    inputs = torch.zeros(0, 5, requires_grad=True)
    for reduction in ("mean", "sum"):
        loss = sigmoid_focal_loss(inputs, torch.zeros(0, 5), reduction=reduction)
        assert loss.item() == 0.0
        loss.backward()
        assert inputs.grad is not None and inputs.grad.shape == (0, 5)
    assert sigmoid_focal_loss(inputs, torch.zeros(0, 5)).shape == (0, 5)


def test_targets_are_constants() -> None:
    inputs, targets = _data(soft=True)
    targets.requires_grad_()
    inputs.requires_grad_()
    sigmoid_focal_loss(inputs, targets).sum().backward()
    assert targets.grad is None and inputs.grad is not None


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_equals_functional(reduction) -> None:
    inputs, targets = _data(soft=True)
    module = FocalLoss(alpha=0.4, gamma=1.5, reduction=reduction, loss_weight=2.5)
    expected = 2.5 * sigmoid_focal_loss(inputs, targets, 0.4, 1.5, reduction)
    torch.testing.assert_close(module(inputs, targets), expected)
    assert "alpha=0.4" in repr(module) and "loss_weight=2.5" in repr(module)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"alpha": 1.5}, ValueError, r"alpha must be in \[-inf, 1.0\], got 1.5"),
        ({"gamma": -1.0}, ValueError, r"gamma must be in \[0.0, inf\], got -1.0"),
        ({"gamma": "2"}, TypeError, "gamma must be a real number, got '2'"),
        ({"targets": torch.zeros(3)}, ValueError, r"targets must have the shape of inputs \(4,\), got \(3,\)"),
        ({"targets": torch.tensor([0.0, 1.0, 2.0, 0.0])}, ValueError, r"targets must lie in \[0, 1\].*\[0, 2\]"),
        ({"targets": torch.tensor([0.0, 1.0, float("nan"), 0.0])}, ValueError, "NaN is not allowed"),
        ({"targets": [0, 1, 0, 0]}, TypeError, "targets must be a torch.Tensor"),
        ({"inputs": torch.zeros(4, dtype=torch.long)}, TypeError, "inputs must be a floating-point tensor.*int64"),
    ],
)
def test_bad_input_is_an_error(kwargs, error, match) -> None:
    call = {"inputs": torch.zeros(4), "targets": torch.tensor([0.0, 1.0, 1.0, 0.0]), **kwargs}
    with pytest.raises(error, match=match):
        sigmoid_focal_loss(**call)


def test_module_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="reduction must be one of"):
        FocalLoss(reduction="avg")
    with pytest.raises(TypeError, match="loss_weight must be a real number"):
        FocalLoss(loss_weight="1")
