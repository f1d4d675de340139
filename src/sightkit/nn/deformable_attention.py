"""Multi-scale deformable attention (Zhu et al., "Deformable DETR: Deformable Transformers for
End-to-End Object Detection", ICLR 2021), in pure PyTorch.

Each query looks at a few sampled points per head and feature level instead of at every
key: the points are its reference point plus learned offsets, their features are read by
bilinear interpolation, and a softmax over all ``levels x points`` weights them. The cost is
linear in the number of queries, so the encoder can attend over stride-8 feature maps.

For training, export and CUDA the sampling is :func:`torch.nn.functional.grid_sample`
(bilinear, zero padding, ``align_corners=False``), the same computation as the official
``ms_deform_attn_core_pytorch`` reference. Inference on the CPU computes the same sum as one
weighted gather (``embedding_bag`` over the four pixels around every point), 1.5-8x faster than
that reference (``benchmarks/deformable_attention.py``). Deformable DETR ships a custom CUDA
kernel for speed; users of it have to compile that kernel for their CUDA and PyTorch versions,
and it does not export to ONNX. Here nothing is compiled, it runs on any device, and it exports
(ONNX ``GridSample``, opset >= 16; the dynamo exporter needs opset >= 18).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export

SpatialShapes = Sequence[tuple[int, int]]


def _describe(value: object) -> str:
    return f"{value.dtype} of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


@export("nn.ms_deform_attn")
def ms_deform_attn(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """The core of multi-scale deformable attention: bilinear samples, weighted and summed.

    For query ``q`` and head ``m``::

        out[q, m] = sum_l sum_p  A[q, m, l, p] * bilinear(value_l[m], loc[q, m, l, p])

    where ``bilinear`` reads level ``l``'s ``[h_l, w_l]`` map at a normalised location (0 and
    1 are the outer edges of the first and last pixel, as in ``grid_sample`` with
    ``align_corners=False``); points outside the map read zeros.

    Training, export and CUDA compute it with ``grid_sample``, level by level; inference on the
    CPU (no gradient wanted) as one weighted gather, 1.5-8x faster (the encoder most).

    Args:
        value: ``[B, N, M, D]`` values of ``M`` heads of width ``D`` for the ``N = sum h_l w_l``
            tokens of all levels, each level flattened row-major, in the order of ``spatial_shapes``.
        spatial_shapes: ``L`` pairs ``(h_l, w_l)``.
        sampling_locations: ``[B, Q, M, L, P, 2]`` as ``(x, y)`` normalised to [0, 1] per level.
        attention_weights: ``[B, Q, M, L, P]``, usually a softmax over ``L x P``.

    Returns:
        ``[B, Q, M * D]``, the heads concatenated, in ``value``'s dtype (bfloat16 and float16
        values are sampled and summed in float32).
    """
    if not isinstance(value, Tensor) or value.ndim != 4:
        raise ValueError(f"value must be a tensor of shape [B, N, M, D], got {_describe(value)}")
    batch, tokens, heads, _ = value.shape
    levels = len(spatial_shapes)
    if not levels:
        raise ValueError("spatial_shapes must hold at least one (h, w) pair, got none")
    if not isinstance(sampling_locations, Tensor) or sampling_locations.ndim != 6:
        raise ValueError(
            f"sampling_locations must be a tensor of shape [B, Q, M, L, P, 2], got {_describe(sampling_locations)}"
        )
    queries, points = sampling_locations.shape[1], sampling_locations.shape[4]
    expected = (batch, queries, heads, levels, points, 2)
    if sampling_locations.shape != expected:
        raise ValueError(
            f"sampling_locations must have shape [B, Q, M, L, P, 2] = {list(expected)} (B, M from value, "
            f"L = len(spatial_shapes)), got {tuple(sampling_locations.shape)}"
        )
    if not isinstance(attention_weights, Tensor) or attention_weights.shape != expected[:5]:
        raise ValueError(
            f"attention_weights must have shape [B, Q, M, L, P] = {list(expected[:5])}, got "
            f"{_describe(attention_weights)}"
        )
    # Under torch.export the sizes are symbolic and cannot be compared with the token count here;
    # torch.split below fails on a mismatch anyway.
    if (
        not (torch.compiler.is_compiling() or torch.compiler.is_exporting())
        and sum(h * w for h, w in spatial_shapes) != tokens
    ):
        raise ValueError(
            f"value has N = {tokens} tokens but spatial_shapes {list(spatial_shapes)} account for "
            f"{sum(h * w for h, w in spatial_shapes)}"
        )
    # Bilinear sampling in float32 at least: under CPU autocast grid_sample casts its bfloat16 or
    # float16 inputs to float32 anyway, once per level; casting the value once is cheaper, and
    # the weighted sums then also run in float32 (float64 stays float64 for gradcheck).
    given_dtype, dtype = value.dtype, torch.promote_types(value.dtype, torch.float32)
    value, sampling_locations, attention_weights = (x.to(dtype) for x in (value, sampling_locations, attention_weights))
    if _weighted_gather_applies(value, spatial_shapes, sampling_locations, attention_weights):
        output = _weighted_gather(value, spatial_shapes, sampling_locations, attention_weights)
    else:
        output = _grid_sample_sum(value, spatial_shapes, sampling_locations, attention_weights)
    return output.to(given_dtype)


def _grid_sample_sum(value: Tensor, spatial_shapes: SpatialShapes, locations: Tensor, weights: Tensor) -> Tensor:
    """:func:`ms_deform_attn` on ``grid_sample``, level by level: differentiable, exportable."""
    batch, _, heads, head_dim = value.shape
    queries, points = locations.shape[1], locations.shape[4]
    value_levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample wants coordinates in [-1, 1].
    grids = 2 * locations - 1
    # [B, Q, M, L, P] -> [B*M, L, P, Q]
    weights = weights.permute(0, 2, 3, 4, 1).flatten(0, 1)
    output = value.new_zeros((batch * heads, head_dim, queries))
    for level, (height, width) in enumerate(spatial_shapes):
        # [B, h*w, M, D] -> [B*M, D, h, w]
        level_value = value_levels[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # [B, Q, M, P, 2] -> [B*M, P, Q, 2]: the samples come out as [B*M, D, P, Q], each point's
        # [B*M, D, Q] slice contiguous along the queries, so that the weighted sum over points is a
        # few vectorised multiply-adds (a sum over a last dimension of P = 4 elements, or stacking
        # the levels into one tensor first, each cost as much again).
        grid = grids[:, :, :, level].permute(0, 2, 3, 1, 4).flatten(0, 1)
        sampled = F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        for point in range(points):
            output = torch.addcmul(output, sampled[:, :, point], weights[:, None, level, point])
    return output.view(batch, heads * head_dim, queries).transpose(1, 2)


def _weighted_gather_applies(value: Tensor, spatial_shapes: SpatialShapes, locations: Tensor, weights: Tensor) -> bool:
    """Whether :func:`_weighted_gather` computes this call: inference on the CPU.

    Its backward (``embedding_bag``'s) is about twice as slow as ``grid_sample``'s, ``torch.export``
    and ONNX keep ``grid_sample`` (an ONNX operator), and CUDA has a fast ``grid_sample`` kernel.
    Row indices are computed in float32, exact up to 2**24 table rows per image.
    """
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (value, locations, weights))
    return (
        value.device.type == "cpu"
        and not needs_grad
        and not (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing())
        and sum((h + 3) * (w + 3) for h, w in spatial_shapes) * value.shape[2] < 2**24
    )


def _weighted_gather(value: Tensor, spatial_shapes: SpatialShapes, locations: Tensor, weights: Tensor) -> Tensor:
    """:func:`ms_deform_attn` as one weighted gather: each query and head sums ``L * P * 4``
    value rows (the four pixels around each sampling point) with weights ``attention x
    bilinear``, which is exactly ``embedding_bag(mode="sum", per_sample_weights=...)``.

    ``grid_sample`` computes the same sum in two passes (samples ``[B*M, D, P, Q]`` per level,
    then the weighted sum), reading each head's channels ``h * w`` apart; here the value rows
    are contiguous ``D``-vectors and nothing but the result is written.

    Each level gets a border of zeros, one pixel left and top, two right and bottom, so that
    every corner read is inside the table and out-of-map corners read zero, as ``grid_sample``'s
    zero padding does: a location is clamped to the border, where its interpolation weights fall
    on zeros, and a corner one past the far border (weight 0) is still a row of the table.
    """
    batch, _, heads, head_dim = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    # [B, h*w, M, D] per level -> [B, (h+3)*(w+3), M, D], concatenated: rows (b, n, m) of the table
    table = torch.cat(
        [
            F.pad(v.reshape(batch, h, w, heads, head_dim), (0, 0, 0, 0, 1, 2, 1, 2)).flatten(1, 2)
            for v, (h, w) in zip(value.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes, strict=True)
        ],
        dim=1,
    )
    padded_tokens = table.shape[1]
    dtype = locations.dtype

    def per_level(values: list[float]) -> Tensor:
        # [M, L, P] against [B, Q, M, L, P]: broadcast over B and Q only, so that the element-wise
        # ops below run over long contiguous stretches ([L, 1] constants made them 2.5x slower)
        return torch.tensor(values, dtype=dtype)[None, :, None].expand(heads, levels, points).contiguous()

    widths = per_level([w for _, w in spatial_shapes])
    heights = per_level([h for h, _ in spatial_shapes])
    row_lengths = per_level([w + 3 for _, w in spatial_shapes])
    starts = list(itertools.accumulate(((h + 3) * (w + 3) for h, w in spatial_shapes[:-1]), initial=0))

    def corner_and_fraction(coordinate: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
        # Normalised -> padded pixel coordinate, where a pixel's centre is at its padded index,
        # clamped to the border. NaN and +-inf read the border (grid_sample returns NaN for them):
        # every row index must be valid.
        pixel = torch.addcmul(torch.full((), 0.5, dtype=dtype), coordinate, size)
        pixel = torch.clamp(torch.nan_to_num(pixel, nan=0.0), min=torch.zeros((), dtype=dtype), max=size + 1)
        corner = pixel.floor()
        return corner, pixel.sub_(corner)

    x0, fx = corner_and_fraction(locations[..., 0], widths)  # [B, Q, M, L, P] each
    y0, fy = corner_and_fraction(locations[..., 1], heights)
    bottom = fy.mul_(weights)
    top = weights - bottom
    top_right, bottom_right = top * fx, bottom * fx
    # [B, Q, M, 4, L, P]: the bag of a query and head is its L * P * 4 corners
    bag_weights = torch.stack([top.sub_(top_right), top_right, bottom.sub_(bottom_right), bottom_right], dim=3)
    # Row of the top-left corner: (b * N' + start_l + y0 * (w_l + 3) + x0) * M + m, exact in float
    # up to the image's part (fewer than 2**24 rows, _weighted_gather_applies), then int32: the
    # table has fewer than 2**31 rows of D elements.
    level_and_head = per_level(starts).mul_(heads).add_(torch.arange(heads, dtype=dtype)[:, None, None])
    row = torch.addcmul(x0, y0, row_lengths).mul_(heads).add_(level_and_head).to(torch.int32)
    row += (torch.arange(batch, dtype=torch.int32) * (padded_tokens * heads))[:, None, None, None, None]
    down = (row_lengths * heads).to(torch.int32)
    bag_rows = torch.stack([row, row + heads, row + down, row + down + heads], dim=3)
    output = F.embedding_bag(
        bag_rows.view(batch * queries * heads, 4 * levels * points),
        table.view(-1, head_dim),
        per_sample_weights=bag_weights.view(batch * queries * heads, 4 * levels * points),
        mode="sum",
    )
    return output.view(batch, queries, heads * head_dim)


@export("nn.MultiScaleDeformableAttention")
class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention with its projections (Deformable DETR, section 4.1).

    From each query, linear layers predict ``n_heads x n_levels x n_points`` sampling offsets
    and attention weights (a softmax over the ``n_levels x n_points`` of a head); the values
    are a linear projection of the input features; :func:`ms_deform_attn` samples and mixes
    them, and an output projection follows.

    Reference points are ``[B, Q, L, 2]`` points ``(x, y)`` or ``[B, Q, L, 4]`` boxes
    ``(cx, cy, w, h)``, normalised to [0, 1] per level. Offsets of a point are in pixels of
    each level; offsets of a box are fractions of its half size divided by ``n_points`` (the
    box form of Deformable DETR's iterative refinement), so the points spread with the box.

    The initialisation is the paper's: zero offset weights, with biases that put the points of
    head ``m`` on a ray at angle ``2 pi m / n_heads``, ``1 .. n_points`` steps out; uniform
    attention weights; Xavier value and output projections.

    Args:
        d_model: feature width (divisible by ``n_heads``).
        n_levels: feature levels ``L``.
        n_heads: attention heads ``M``.
        n_points: sampling points ``P`` per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model must be divisible by n_heads, got d_model={d_model} and n_heads={n_heads}")
        if min(n_levels, n_heads, n_points) < 1:
            raise ValueError(f"n_levels, n_heads and n_points must be >= 1, got {n_levels}, {n_heads}, {n_points}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        # Scale so that the larger coordinate is 1: the first point lands on a neighbouring pixel.
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        grid = directions[:, None, None, :] * steps[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(-1, self.n_levels, -1, -1).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: SpatialShapes,
        value_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to its sampled points.

        Args:
            query: ``[B, Q, d_model]``, position encoding included.
            reference_points: ``[B, Q, L, 2]`` points or ``[B, Q, L, 4]`` boxes (class docstring).
            value: ``[B, N, d_model]`` input features of all levels (``N = sum h_l w_l``).
            spatial_shapes: ``L`` pairs ``(h_l, w_l)``.
            value_padding_mask: ``[B, N]`` bool, True on padding (those values are zeroed).

        Returns:
            ``[B, Q, d_model]``.
        """
        batch, queries, _ = query.shape
        if len(spatial_shapes) != self.n_levels:
            raise ValueError(f"spatial_shapes must hold n_levels = {self.n_levels} pairs, got {len(spatial_shapes)}")
        if reference_points.shape[:3] != (batch, queries, self.n_levels) or reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                f"reference_points must have shape [B, Q, L, 2] or [B, Q, L, 4] = "
                f"[{batch}, {queries}, {self.n_levels}, 2 | 4], got {tuple(reference_points.shape)}"
            )
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        projected = self.value_proj(value)
        if value_padding_mask is not None:
            # A product, not masked_fill: with the mask broadcast over the channels masked_fill is
            # 5-7x slower on the CPU (0.19-0.29 against 0.02-0.04 ms for [8, 336, 128]).
            projected = projected * (~value_padding_mask[..., None]).to(projected.dtype)
        projected = projected.view(batch, value.shape[1], heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points).softmax(-1)
        weights = weights.view(batch, queries, heads, levels, points)
        # One multiply-add each (twice as fast as a product and a sum over these broadcasts).
        if reference_points.shape[-1] == 2:
            # Pixel offsets: divide by each level's (w, h); new_full keeps the sizes symbolic under
            # torch.export. The reciprocals are laid out [M, L, P, 2] as the offsets are: broadcast
            # from [L, 2] the multiply-add ran 2.4x slower.
            sizes = torch.stack(
                [torch.stack([query.new_full((), w), query.new_full((), h)]) for h, w in spatial_shapes]
            )
            inverse_sizes = (1 / sizes)[None, :, None, :].expand(heads, levels, points, 2).contiguous()
            locations = torch.addcmul(reference_points[:, :, None, :, None, :], offsets, inverse_sizes)
        else:
            centres, scales = reference_points[..., :2], reference_points[..., 2:] * (0.5 / points)
            locations = torch.addcmul(centres[:, :, None, :, None, :], offsets, scales[:, :, None, :, None, :])
        return self.output_proj(ms_deform_attn(projected, spatial_shapes, locations, weights))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, n_points={self.n_points}"
