"""Encoder and decoder layers of the deformable transformer (Zhu et al., "Deformable DETR",
ICLR 2021), as DINO uses them (Zhang et al., "DINO: DETR with Improved DeNoising Anchor Boxes
for End-to-End Object Detection", ICLR 2023).

The encoder layer replaces DETR's self-attention over all tokens of one map by
:class:`MultiScaleDeformableAttention` over the tokens of every level; the decoder layer keeps
ordinary self-attention among the queries (with an optional attention mask, which DINO's
denoising queries need) and replaces the cross-attention by deformable attention around each
query's reference box. Layers are post-norm, as in both papers; batch-first.
"""

from __future__ import annotations

from torch import Tensor, nn

from sightkit._api import export
from sightkit.nn.deformable_attention import MultiScaleDeformableAttention, SpatialShapes
from sightkit.nn.transformer import _FeedForward


@export("nn.DeformableEncoderLayer")
class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over the multi-scale tokens, then a feed-forward block, each
    with a residual connection and a LayerNorm."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        n_levels: int = 4,
        n_points: int = 4,
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, n_levels, nhead, n_points)
        self.ffn = _FeedForward(d_model, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: SpatialShapes,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``src``, ``pos``: ``[B, N, D]``; ``reference_points``: ``[B, N, L, 2]`` each token's
        centre on every level, normalised to [0, 1]; ``padding_mask``: ``[B, N]``, True on padding."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        return self.norm2(src + self.dropout2(self.ffn(src)))


@export("nn.DeformableDecoderLayer")
class DeformableDecoderLayer(nn.Module):
    """Self-attention among the queries, deformable cross-attention to the encoder memory
    around each query's reference box, and a feed-forward block, each with a residual
    connection and a LayerNorm."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        n_levels: int = 4,
        n_points: int = 4,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = MultiScaleDeformableAttention(d_model, n_levels, nhead, n_points)
        self.ffn = _FeedForward(d_model, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_boxes: Tensor,
        memory: Tensor,
        spatial_shapes: SpatialShapes,
        memory_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Update the queries.

        Args:
            tgt: ``[B, Q, D]`` query content.
            query_pos: ``[B, Q, D]`` query position (an embedding of the reference box).
            reference_boxes: ``[B, Q, L, 4]`` ``cxcywh`` per level, normalised to [0, 1].
            memory: ``[B, N, D]`` encoder output.
            spatial_shapes: ``L`` pairs ``(h_l, w_l)``.
            memory_padding_mask: ``[B, N]`` bool, True on padding.
            attn_mask: ``[Q, Q]`` bool, True where query ``i`` may not attend to query ``j``.
        """
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, attn_mask=attn_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        attended = self.cross_attn(tgt + query_pos, reference_boxes, memory, spatial_shapes, memory_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))
