"""The DETR encoder-decoder transformer (Carion et al., ECCV 2020).

Differs from :class:`torch.nn.Transformer` in what DETR needs and torch's layers cannot
express: the spatial position encoding is added to the queries and keys of every encoder
attention and to the keys of every decoder cross-attention, the learned object queries are
added to the decoder's queries at every layer, and the decoder can return the output of
every layer (for the auxiliary losses). The attention itself is :class:`torch.nn.MultiheadAttention`.

Layers are post-norm as in the paper (``x = norm(x + sublayer(x))``); ``normalize_before``
gives the pre-norm variant (``x = x + sublayer(norm(x))``), which adds a final encoder norm.
All tensors are batch-first.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sightkit._api import export


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class _FeedForward(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.linear1(x).relu()))


@export("nn.TransformerEncoderLayer")
class TransformerEncoderLayer(nn.Module):
    """Self-attention over image features (position encoding added to queries and keys) and
    a feed-forward block, each with a residual connection and a LayerNorm."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = _FeedForward(d_model, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, src: Tensor, pos: Tensor | None = None, key_padding_mask: Tensor | None = None) -> Tensor:
        """``src`` and ``pos``: ``[B, N, D]``; ``key_padding_mask``: ``[B, N]`` bool, True on padding."""
        if self.normalize_before:
            x = self.norm1(src)
            q = k = _with_pos(x, pos)
            src = src + self.dropout1(self.self_attn(q, k, x, key_padding_mask=key_padding_mask, need_weights=False)[0])
            return src + self.dropout2(self.ffn(self.norm2(src)))
        q = k = _with_pos(src, pos)
        attended = self.self_attn(q, k, src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attended))
        return self.norm2(src + self.dropout2(self.ffn(src)))


@export("nn.TransformerDecoderLayer")
class TransformerDecoderLayer(nn.Module):
    """Self-attention among the object queries, cross-attention from the queries to the
    encoder memory, and a feed-forward block, each with a residual connection and a LayerNorm."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = _FeedForward(d_model, dim_feedforward, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``tgt``, ``query_pos``: ``[B, Q, D]``; ``memory``, ``pos``: ``[B, N, D]``;
        ``memory_key_padding_mask``: ``[B, N]`` bool, True on padding."""
        if self.normalize_before:
            x = self.norm1(tgt)
            q = k = _with_pos(x, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, x, need_weights=False)[0])
            x = self.norm2(tgt)
            attended = self.cross_attn(
                _with_pos(x, query_pos),
                _with_pos(memory, pos),
                memory,
                key_padding_mask=memory_key_padding_mask,
                need_weights=False,
            )[0]
            tgt = tgt + self.dropout2(attended)
            return tgt + self.dropout3(self.ffn(self.norm3(tgt)))
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended = self.cross_attn(
            _with_pos(tgt, query_pos),
            _with_pos(memory, pos),
            memory,
            key_padding_mask=memory_key_padding_mask,
            need_weights=False,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


@export("nn.Transformer")
class Transformer(nn.Module):
    """DETR's encoder-decoder: encodes flattened image features, then decodes a set of
    learned object queries against them.

    Args:
        d_model: feature width ``D``.
        nhead: attention heads (``D`` must be divisible by it).
        num_encoder_layers: encoder depth (0 skips the encoder).
        num_decoder_layers: decoder depth (at least 1).
        dim_feedforward: hidden width of the feed-forward blocks.
        dropout: dropout in attention and feed-forward blocks.
        normalize_before: pre-norm layers instead of the paper's post-norm.
        return_intermediate: return every decoder layer's output, not only the last one.
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
        return_intermediate: bool = True,
    ) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model must be divisible by nhead, got d_model={d_model} and nhead={nhead}")
        if num_encoder_layers < 0 or num_decoder_layers < 1:
            raise ValueError(
                "need num_encoder_layers >= 0 and num_decoder_layers >= 1, "
                f"got {num_encoder_layers} and {num_decoder_layers}"
            )
        layer_args = (d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.encoder_layers = nn.ModuleList(TransformerEncoderLayer(*layer_args) for _ in range(num_encoder_layers))
        # Post-norm encoder layers end with a norm already; pre-norm ones need a final one.
        self.encoder_norm = nn.LayerNorm(d_model) if normalize_before and num_encoder_layers else nn.Identity()
        self.decoder_layers = nn.ModuleList(TransformerDecoderLayer(*layer_args) for _ in range(num_decoder_layers))
        # As in DETR, the decoder norm is applied to every returned output in both variants,
        # so that the shared prediction heads see normalised features from every layer.
        self.decoder_norm = nn.LayerNorm(d_model)
        self.d_model = d_model
        self.nhead = nhead
        self.return_intermediate = return_intermediate
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Encode ``src`` and decode the queries.

        Args:
            src: ``[B, N, D]`` flattened image features.
            mask: ``[B, N]`` bool, True on padding.
            query_embed: ``[Q, D]`` learned object queries (their positional part).
            pos: ``[B, N, D]`` position encoding of ``src``.

        Returns:
            ``(hs, memory)``: decoder outputs ``[L, B, Q, D]`` (``L`` decoder layers with
            ``return_intermediate``, else 1) and the encoder memory ``[B, N, D]``.
        """
        memory = src
        for layer in self.encoder_layers:
            memory = layer(memory, pos, mask)
        memory = self.encoder_norm(memory)
        query_pos = query_embed[None].expand(src.shape[0], -1, -1)
        # The decoder's content input starts at zero: the queries enter through query_pos.
        tgt = query_pos.new_zeros(query_pos.shape)
        outputs = []
        for layer in self.decoder_layers:
            tgt = layer(tgt, memory, pos, query_pos, mask)
            if self.return_intermediate:
                outputs.append(self.decoder_norm(tgt))
        if not self.return_intermediate:
            outputs.append(self.decoder_norm(tgt))
        return torch.stack(outputs), memory
