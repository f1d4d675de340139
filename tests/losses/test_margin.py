"""Margin losses: hand values, the plain softmax at zero margins, the θ + m > π continuation,
finite gradients at cos = ±1, gradcheck, module == function, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from sightkit.losses import (
    CombinedMarginLoss,
    arcface_loss,
    combined_margin_logits,
    combined_margin_loss,
    cosface_loss,
)
from sightkit.losses.margin import margin_target


def _batch(n: int = 16, c: int = 7, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(n, 5, generator=g, dtype=torch.float64))
    centres = F.normalize(torch.randn(c, 5, generator=g, dtype=torch.float64))
    labels = torch.randint(0, c, (n,), generator=g)
    return (embeddings @ centres.T).to(dtype), labels


def test_arcface_one_sample_by_hand() -> None:
    # cos θ = 0.8 (sin θ = 0.6): cos(θ + m) = 0.8 cos m - 0.6 sin m; the other class has cos 0.1.
    s, m = 4.0, 0.5
    target = 0.8 * math.cos(m) - 0.6 * math.sin(m)
    expected = -math.log(math.exp(s * target) / (math.exp(s * target) + math.exp(s * 0.1)))
    cosine = torch.tensor([[0.1, 0.8]], dtype=torch.float64)
    labels = torch.tensor([1])
    torch.testing.assert_close(
        arcface_loss(cosine, labels, scale=s, margin=m), torch.tensor(expected, dtype=torch.float64)
    )
    logits = combined_margin_logits(cosine, labels, s, m2=m)
    torch.testing.assert_close(logits, torch.tensor([[s * 0.1, s * target]], dtype=torch.float64))


def test_cosface_and_sphereface_by_hand() -> None:
    cosine = torch.tensor([[0.5, 0.2, -0.3]], dtype=torch.float64)
    labels = torch.tensor([0])
    # CosFace: cos θ - m.
    expected = -math.log(math.exp(2 * 0.1) / (math.exp(2 * 0.1) + math.exp(2 * 0.2) + math.exp(-2 * 0.3)))
    torch.testing.assert_close(cosface_loss(cosine, labels, scale=2.0, margin=0.4).item(), expected)
    # SphereFace-style m1 = 2 at θ = π/3: cos(2π/3) = -1/2.
    logits = combined_margin_logits(cosine, labels, 1.0, m1=2.0, m2=0.0)
    torch.testing.assert_close(logits[0, 0].item(), -0.5)


def test_zero_margins_are_the_scaled_softmax() -> None:
    cosine, labels = _batch()
    expected = F.cross_entropy(30.0 * cosine, labels, reduction="none")
    torch.testing.assert_close(combined_margin_loss(cosine, labels, 30.0, 1.0, 0.0, 0.0, "none"), expected)


def test_arcface_equals_the_angle_addition_formula_below_pi() -> None:
    # The formula of the ArcFace paper's reference code, cos θ cos m - sin θ sin m, where θ + m <= π.
    cosine, labels = _batch(64, 9, torch.float64, seed=3)
    m = 0.5
    c = cosine[torch.arange(64), labels]
    assert (torch.arccos(c) + m <= math.pi).all()
    reference = 64.0 * cosine.clone()
    reference[torch.arange(64), labels] = 64.0 * (c * math.cos(m) - torch.sqrt(1 - c**2) * math.sin(m))
    torch.testing.assert_close(combined_margin_logits(cosine, labels, 64.0, m2=m), reference)


@pytest.mark.parametrize(("m1", "m2", "m3"), [(1.0, 0.5, 0.0), (1.0, 1.2, 0.0), (1.35, 0.0, 0.0), (1.2, 0.4, 0.2)])
def test_target_decreases_continuously_in_the_angle_past_pi(m1: float, m2: float, m3: float) -> None:
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    psi = margin_target(torch.cos(theta), m1, m2, m3)
    steps = psi.diff()
    assert (steps <= 1e-12).all()  # monotonic: a worse angle never gets a larger target logit
    assert steps.abs().max() < 1e-3  # continuous: no jump at m1 θ + m2 = π
    inside = m1 * theta + m2 <= math.pi
    torch.testing.assert_close(psi[inside], torch.cos(m1 * theta[inside] + m2) - m3)


def test_past_pi_by_hand() -> None:
    # θ + m = π + δ: the continuation (-1)^1 cos(π + δ) - 2 = cos δ - 2.
    theta, m = 2.9, 0.5
    delta = theta + m - math.pi
    got = margin_target(torch.tensor(math.cos(theta), dtype=torch.float64), 1.0, m, 0.0)
    torch.testing.assert_close(got.item(), math.cos(delta) - 2)


@pytest.mark.parametrize(("m1", "m2", "m3"), [(1.0, 0.5, 0.0), (1.0, 0.0, 0.4), (1.35, 0.2, 0.1)])
def test_finite_gradients_at_plus_minus_one(m1: float, m2: float, m3: float) -> None:
    # Exactly ±1, and just past it as rounding produces: no NaN anywhere.
    cosine = torch.tensor([[1.0, 0.2], [0.3, -1.0], [1.0 + 1e-6, 0.0], [-1.0 - 1e-6, 0.5]], requires_grad=True)
    labels = torch.tensor([0, 1, 0, 0])
    loss = combined_margin_loss(cosine, labels, 16.0, m1, m2, m3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cosine.grad).all()
    if (m1, m2) == (1.0, 0.0):  # CosFace keeps its exact gradient at ±1: d loss / d target = s (p - 1) / N
        p = torch.softmax(combined_margin_logits(cosine.detach(), labels, 16.0, m1, m2, m3), 1)
        torch.testing.assert_close(cosine.grad[0, 0], 16.0 * (p[0, 0] - 1) / 4)


@pytest.mark.parametrize(("m1", "m2", "m3"), [(1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (1.3, 0.3, 0.1), (1.0, 1.0, 0.0)])
def test_gradcheck(m1: float, m2: float, m3: float) -> None:
    cosine, labels = _batch(5, 4, torch.float64)
    cosine.requires_grad_()
    assert torch.autograd.gradcheck(lambda c: combined_margin_loss(c, labels, 4.0, m1, m2, m3, "none"), (cosine,))


def test_half_precision_is_computed_in_float32() -> None:
    cosine, labels = _batch(dtype=torch.bfloat16)
    loss = arcface_loss(cosine, labels, reduction="none")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, arcface_loss(cosine.float(), labels, reduction="none"))


def test_empty_batch_is_a_zero_with_a_graph() -> None:
    cosine = torch.zeros(0, 5, requires_grad=True)
    loss = arcface_loss(cosine, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and cosine.grad.shape == (0, 5)


def test_ignored_rows_are_only_scaled() -> None:
    cosine, labels = _batch()
    labels[::2] = -1
    logits = combined_margin_logits(cosine, labels, 10.0)
    torch.testing.assert_close(logits[::2], 10.0 * cosine[::2])
    assert not torch.allclose(logits[1::2], 10.0 * cosine[1::2])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_equals_function(reduction: str) -> None:
    cosine, labels = _batch()
    module = CombinedMarginLoss(32.0, 1.1, 0.3, 0.05, reduction)
    torch.testing.assert_close(
        module(cosine, labels), combined_margin_loss(cosine, labels, 32.0, 1.1, 0.3, 0.05, reduction)
    )
    assert "m1=1.1" in repr(module)


def test_bad_inputs_are_errors() -> None:
    cosine, labels = _batch(4, 3)
    with pytest.raises(TypeError, match=r"labels must be an integer tensor \[N\].*float32"):
        arcface_loss(cosine, labels.float())
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\), got values in \[0, 3\]"):
        arcface_loss(cosine, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\), got values in \[-1, "):
        arcface_loss(cosine, torch.tensor([-1, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"labels must have shape \[N\] = \[4\].*got \(3,\)"):
        arcface_loss(cosine, labels[:3])
    with pytest.raises(TypeError, match=r"cosine must be a floating-point tensor \[N, C\].*shape \(4,\)"):
        arcface_loss(cosine[:, 0], labels)
    with pytest.raises(ValueError, match="reduction must be one of"):
        arcface_loss(cosine, labels, reduction="avg")
    with pytest.raises(ValueError, match="scale must be > 0, got 0"):
        CombinedMarginLoss(scale=0)
    with pytest.raises(ValueError, match=r"m1 must be in \[1.0, inf\], got 0.5"):
        CombinedMarginLoss(m1=0.5)
    with pytest.raises(ValueError, match=r"m2 must be in \[0.0, 3.14"):
        combined_margin_logits(cosine, labels, m2=4.0)
