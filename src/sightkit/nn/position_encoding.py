"""2-D position encodings for image features: the fixed sine encoding and a learned one.

Both give ``[B, 2 * num_pos_feats, H, W]`` for a padding mask ``[B, H, W]`` (True on
padding): the first half of the channels encodes the row (y), the second half the column
(x), as in DETR (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sightkit._api import export


def _check_mask(mask: Tensor) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool tensor of shape [B, H, W], got {type(mask).__name__}")
    if mask.ndim != 3 or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape [B, H, W], got {mask.dtype} of shape {tuple(mask.shape)}"
        )


@export("nn.sine_position_encoding")
def sine_position_encoding(
    mask: Tensor,
    num_pos_feats: int = 128,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    eps: float = 1e-6,
) -> Tensor:
    """The sine position encoding of "Attention Is All You Need" generalised to images (DETR).

    For a valid pixel, ``y`` and ``x`` are its 1-based row and column counted over the valid
    (unpadded) pixels only; with ``normalize`` they are divided by the valid height / width
    and multiplied by ``scale``, so the encoding describes the position inside the image
    whatever the padding. Channel ``2i`` of the y half is ``sin(y / T^(2i / F))`` and channel
    ``2i + 1`` is ``cos(y / T^(2i / F))`` with ``T = temperature`` and ``F = num_pos_feats``;
    the x half is the same for ``x``.

    Args:
        mask: ``[B, H, W]`` bool, True on padding.
        num_pos_feats: ``F``, channels per axis (even); the output has ``2F`` channels.
        temperature: ``T``, the longest wavelength.
        normalize: divide positions by the valid size and multiply by ``scale``.
        scale: range of normalised positions.
        eps: keeps an all-padding row or column finite.

    Returns:
        ``[B, 2F, H, W]`` float32, y half first.
    """
    _check_mask(mask)
    if num_pos_feats <= 0 or num_pos_feats % 2:
        raise ValueError(f"num_pos_feats must be a positive even number, got {num_pos_feats}")
    valid = (~mask).to(torch.float32)
    y_embed = valid.cumsum(1)
    x_embed = valid.cumsum(2)
    if normalize:
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    # Interleave sin (even channels) and cos (odd channels), as the paper's encoding does.
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


@export("nn.PositionEmbeddingSine")
class PositionEmbeddingSine(nn.Module):
    """Module form of :func:`sine_position_encoding`; it has no parameters."""

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        if num_pos_feats <= 0 or num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be a positive even number, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask: Tensor) -> Tensor:
        """``[B, H, W]`` bool padding mask -> ``[B, 2 * num_pos_feats, H, W]``."""
        return sine_position_encoding(mask, self.num_pos_feats, self.temperature, self.normalize, self.scale)


@export("nn.PositionEmbeddingLearned")
class PositionEmbeddingLearned(nn.Module):
    """Absolute learned position embedding: one vector per row and one per column,
    concatenated (y half first, to match :func:`sine_position_encoding`).

    Positions are absolute feature-map indices, so padding does not change them; feature
    maps may have at most ``max_size`` rows and columns.
    """

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        self.max_size = max_size
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """``[B, H, W]`` bool padding mask -> ``[B, 2 * num_pos_feats, H, W]``."""
        _check_mask(mask)
        batch, height, width = mask.shape
        if height > self.max_size or width > self.max_size:
            raise ValueError(
                f"feature map of {height}x{width} exceeds the learned embedding's max_size={self.max_size}; "
                "build PositionEmbeddingLearned with a larger max_size or use the sine encoding"
            )
        y = self.row_embed(torch.arange(height, device=mask.device))
        x = self.col_embed(torch.arange(width, device=mask.device))
        pos = torch.cat((y[:, None, :].expand(-1, width, -1), x[None, :, :].expand(height, -1, -1)), dim=-1)
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1)
