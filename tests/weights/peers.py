"""Peer models for the converter tests, with every parameter and buffer drawn at random."""

from __future__ import annotations

import torch
from torch import nn


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Redraw every floating-point parameter and buffer of ``module`` in place: BatchNorm
    variances in [0.5, 1.5], norm scales around 1, biases and means around 0, weight matrices
    with variance 1/fan-in (activations stay of order 1 through deep networks). Fresh norms
    (scale 1, shift 0) and frozen BatchNorm (the identity) would hide a misplaced tensor."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.ndim == 1 and name.endswith("weight"):
                tensor.copy_(1 + 0.2 * noise)
            elif tensor.ndim <= 1:
                tensor.copy_(0.1 * noise)
            else:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
    return module


def padded_batch(height: int = 64, width: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images, the second padded at the bottom and right: ``[2, 3, H, W]`` and its mask ``[2, H, W]``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, height, width, generator=generator)
    mask = torch.zeros(2, height, width, dtype=torch.bool)
    mask[1, height * 3 // 4 :, :] = True
    mask[1, :, width // 2 :] = True
    images[mask[:, None].expand_as(images)] = 0.0
    return images, mask
