"""RealNVP: a normalising flow on low-dimensional points, the residual density of RLE.

A flow is an invertible map ``f`` from data ``x`` to a latent ``z = f(x)`` with a standard
normal prior, so that ``log p(x) = log N(f(x); 0, I) + log |det df/dx|``. RealNVP builds
``f`` from affine coupling layers: each keeps the coordinates selected by a binary mask and
scales and shifts the others by amounts computed from the kept ones, which makes the
Jacobian triangular and its log-determinant the sum of the log-scales.

The design is that of the official RLE code (Li et al., "Human Pose Regression with
Residual Log-likelihood Estimation", ICCV 2021, ``rlepose/models/layers/real_nvp.py``) and
mmpose's copy of it: 6 coupling layers with alternating masks ``[0, 1]``, ``[1, 0]``, ...
on 2-D points, scale and translation nets ``Linear(D, 64) - LeakyReLU - Linear(64, 64) -
LeakyReLU - Linear(64, D)`` (``tanh`` on the scale), and Xavier-uniform weights with gain
0.01 (the biases keep PyTorch's default initialisation, as there). The parameter names (``s.i``, ``t.i``,
``mask``) are the official ones, so its weights load as they are.

Reference: Dinh, Sohl-Dickstein and Bengio, "Density estimation using Real NVP", ICLR 2017.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sightkit._api import export


def _coupling_net(dim: int, hidden: int, bounded: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU()]
    layers.append(nn.Linear(hidden, dim))
    if bounded:
        # The log-scale is bounded to (-1, 1) per layer, which keeps the flow well conditioned.
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


@export("nn.RealNVP")
class RealNVP(nn.Module):
    """A RealNVP flow on ``D``-dimensional points with a standard normal prior.

    Directions: :meth:`forward` maps data to the latent (the density direction),
    :meth:`inverse` maps latent samples to data (the sampling direction).

    Args:
        dim: ``D``, the dimension of the points (2 for image keypoints, 3 with depth).
        num_layers: affine coupling layers; the masks alternate, so an even number
            transforms every coordinate equally often.
        hidden: width of the scale and translation nets.
        init_gain: gain of the Xavier-uniform initialisation of their weights (official: 0.01).

    Example::

        flow = RealNVP()
        log_p = flow.log_prob(torch.randn(100, 2))  # [100]
    """

    mask: Tensor

    def __init__(self, dim: int = 2, num_layers: int = 6, hidden: int = 64, init_gain: float = 0.01) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"dim must be >= 2 (a coupling layer keeps some coordinates and moves others), got {dim}")
        if num_layers < 1 or hidden < 1:
            raise ValueError(f"num_layers and hidden must be >= 1, got {num_layers} and {hidden}")
        self.dim = dim
        masks = [[float((j + i) % 2) for j in range(dim)] for i in range(num_layers)]
        self.register_buffer("mask", torch.tensor(masks))
        self.s = nn.ModuleList(_coupling_net(dim, hidden, bounded=True) for _ in range(num_layers))
        self.t = nn.ModuleList(_coupling_net(dim, hidden, bounded=False) for _ in range(num_layers))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, gain=init_gain)

    def _check(self, points: Tensor, name: str) -> Tensor:
        if not isinstance(points, Tensor) or not points.is_floating_point():
            got = f"dtype {points.dtype}" if isinstance(points, Tensor) else type(points).__name__
            raise TypeError(f"{name} must be a floating-point tensor [..., {self.dim}], got {got}")
        if points.ndim == 0 or points.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape [..., {self.dim}], got {tuple(points.shape)}")
        return points.to(self.mask.dtype)

    def _scale_shift(self, index: int, kept: Tensor) -> tuple[Tensor, Tensor]:
        moved = 1 - self.mask[index]
        return self.s[index](kept) * moved, self.t[index](kept) * moved

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent: ``x`` ``[..., D]`` -> ``(z [..., D], log |det dz/dx| [...])``,
        computed in the flow's dtype."""
        z = self._check(x, "x")
        log_det = z.new_zeros(z.shape[:-1])
        for index in reversed(range(len(self.s))):
            mask = self.mask[index]
            kept = z * mask
            s, t = self._scale_shift(index, kept)
            z = kept + (1 - mask) * (z - t) * torch.exp(-s)
            log_det = log_det - s.sum(-1)
        return z, log_det

    def inverse(self, z: Tensor) -> Tensor:
        """Latent to data: ``z`` ``[..., D]`` -> ``x`` ``[..., D]``; ``forward(inverse(z))[0] == z``."""
        x = self._check(z, "z")
        for index in range(len(self.s)):
            mask = self.mask[index]
            kept = x * mask
            s, t = self._scale_shift(index, kept)
            x = kept + (1 - mask) * (x * torch.exp(s) + t)
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` ``[...]`` of points ``x`` ``[..., D]`` under the flow (natural log)."""
        z, log_det = self(x)
        return log_det - 0.5 * z.square().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """``count`` points ``[count, D]`` drawn from the flow's density."""
        noise = torch.randn(count, self.dim, generator=generator, dtype=self.mask.dtype)
        return self.inverse(noise.to(self.mask.device))
