"""RealNVP: invertibility, log-determinant against autograd's Jacobian, the identity at zero
weights, a normalised density, sampling, the official parameter layout, errors."""

import math

import pytest
import torch
from torch import nn

from sightkit.nn import RealNVP


def _flow(dim: int = 2, gain: float = 1.0, dtype: torch.dtype = torch.float64) -> RealNVP:
    # Gain 1 (not the official 0.01) makes the flow far from the identity, so the checks bite.
    torch.manual_seed(1)
    return RealNVP(dim=dim, init_gain=gain).to(dtype)


@pytest.mark.parametrize("dim", [2, 3])
def test_inverse_of_forward_is_the_identity(dim: int) -> None:
    flow = _flow(dim)
    x = torch.randn(50, dim, dtype=torch.float64) * 3
    z, _ = flow(x)
    assert (z - x).abs().max() > 0.1  # the flow does move points
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-10, rtol=0)
    torch.testing.assert_close(flow(flow.inverse(x))[0], x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dim", [2, 3])
def test_log_det_equals_autograd_jacobian(dim: int) -> None:
    flow = _flow(dim)
    for point in torch.randn(5, dim, dtype=torch.float64):
        jacobian = torch.autograd.functional.jacobian(lambda x: flow(x)[0], point)
        _, log_det = flow(point)
        sign, expected = torch.linalg.slogdet(jacobian)
        assert sign > 0
        torch.testing.assert_close(log_det, expected, atol=1e-10, rtol=0)


def test_zero_weights_give_the_identity_and_the_standard_normal() -> None:
    flow = _flow()
    for parameter in flow.parameters():
        nn.init.zeros_(parameter)
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 0.5]], dtype=torch.float64)
    z, log_det = flow(x)
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(log_det, torch.zeros(3, dtype=torch.float64))
    # log N(x; 0, I) in 2-D = -|x|^2 / 2 - log(2 pi)
    expected = torch.tensor([0.0, -2.5, -4.625], dtype=torch.float64) - math.log(2 * math.pi)
    torch.testing.assert_close(flow.log_prob(x), expected)
    reference = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2).double())
    torch.testing.assert_close(flow.log_prob(x), reference.log_prob(x))


def test_density_integrates_to_one() -> None:
    flow = _flow(gain=0.5)
    step = 0.1
    axis = torch.arange(-10, 10, step, dtype=torch.float64) + step / 2
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * step**2
    assert abs(mass.item() - 1.0) < 1e-3


def test_samples_follow_the_density() -> None:
    """Samples pushed back through the flow are standard normal: mean 0, covariance I."""
    flow = _flow(gain=0.5)
    samples = flow.sample(5000, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        z, _ = flow(samples)
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(2, dtype=torch.float64), atol=0.08, rtol=0)


def test_official_layout_and_initialisation() -> None:
    flow = RealNVP()
    torch.testing.assert_close(flow.mask, torch.tensor([[0.0, 1.0], [1.0, 0.0]] * 3))
    assert [type(m).__name__ for m in flow.s[0]] == ["Linear", "LeakyReLU", "Linear", "LeakyReLU", "Linear", "Tanh"]
    assert [type(m).__name__ for m in flow.t[0]] == ["Linear", "LeakyReLU", "Linear", "LeakyReLU", "Linear"]
    assert sum(p.numel() for p in flow.parameters()) == 12 * (2 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2)
    # Xavier-uniform with gain 0.01: |w| <= 0.01 sqrt(6 / (fan_in + fan_out)).
    bound = 0.01 * math.sqrt(6 / (64 + 64))
    assert flow.s[0][2].weight.abs().max() <= bound


def test_gradients_reach_every_parameter() -> None:
    flow = _flow(dtype=torch.float32)
    flow.log_prob(torch.randn(64, 2)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


def test_leading_dimensions_and_dtype() -> None:
    flow = _flow(dtype=torch.float32)
    x = torch.randn(4, 17, 2)
    log_p = flow.log_prob(x.half())
    assert log_p.dtype == torch.float32
    torch.testing.assert_close(log_p, flow.log_prob(x.half().float().reshape(-1, 2)).reshape(4, 17))


def test_errors_name_the_argument() -> None:
    flow = RealNVP()
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 2\], got \(5, 3\)"):
        flow(torch.zeros(5, 3))
    with pytest.raises(TypeError, match="z must be a floating-point tensor"):
        flow.inverse(torch.zeros(5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="dim must be >= 2"):
        RealNVP(dim=1)
