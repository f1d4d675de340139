"""DINO: a DETR that converges fast (Zhang et al., "DINO: DETR with Improved DeNoising Anchor
Boxes for End-to-End Object Detection", ICLR 2023), with RT-DETR's IoU-aware classification
(Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection", CVPR 2024).

What it changes against :class:`~sightkit.models.DETR`, each a known cure for DETR's slow
training:

- multi-scale features (strides 8, 16, 32, plus stride-2 convolutions for coarser levels)
  and :class:`~sightkit.nn.MultiScaleDeformableAttention` in the encoder and in the decoder's
  cross-attention (Deformable DETR): each query reads a few points around its reference box
  instead of attending to every token;
- query selection: every encoder token proposes a box (an anchor at its position, refined by a
  head) and a class score; the ``Q`` best proposals become the decoder's reference boxes
  ("two-stage" Deformable DETR). Only those ``Q`` tokens go through the box head: the scores
  choose them, and the head works token by token. As in DINO's "mixed" selection the
  reference boxes come from the encoder and the query content is learned;
- iterative box refinement: each decoder layer predicts a correction of the previous layer's
  box in logit space, and DINO's "look forward twice": layer ``i``'s box loss also trains
  layer ``i - 1`` (the reference enters the next layer detached, its prediction does not);
- contrastive denoising queries (:func:`~sightkit.models.contrastive_denoising`) in training;
- sigmoid classification (no "no object" class) trained with the varifocal loss on IoU
  targets and matched with the focal cost (:class:`~sightkit.losses.DINOCriterion`).

Registered models (``create_model(name, **overrides)``):

============== ==================================== ========== ======= ===== ======= ===== =======
name           backbone                             levels     d_model heads enc+dec FFN   queries
============== ==================================== ========== ======= ===== ======= ===== =======
dino_r50       ResNet-50, frozen BN, layer2-4 train 8,16,32,64 256     8     6+6     2048  900
dino_r18_tiny  ResNet-18 to layer3, BatchNorm, all  8,16,32    128     4     1+3     512   30
============== ==================================== ========== ======= ===== ======= ===== =======

``dino_r50`` is DINO-4scale's configuration (100 denoising pairs, label noise 0.5, box noise
1.0, 4 points, no dropout). ``dino_r18_tiny`` is sized like ``detr_r18_tiny`` for training
from scratch on two CPU cores: the same ResNet-18 cut after layer3, read at strides 8 and 16,
and a stride-32 level from a convolution on layer3, as Deformable DETR builds its extra level.
One encoder layer (its 336 tokens at 128 pixels cost as much as the ResNet) and 30 denoising
copies keep a training step within 2x of ``detr_r18_tiny``'s.

IDEA-Research's published DINO-4scale checkpoints fit ``dino_r50`` with five options that
reproduce their network (:mod:`sightkit.weights.dino` sets them): ``position_temperature=20``,
``decoder_norm=True``, ``logit_eps=1e-3``, ``invalid_anchor="inf"`` and ``query_pos_frame="padded"``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MLP

from sightkit._api import export
from sightkit.losses.dino_criterion import DINOCriterion
from sightkit.models.backbones import MultiScaleBackbone, build_backbone
from sightkit.models.denoising import DenoisingQueries, contrastive_denoising
from sightkit.models.detr import _check_inputs
from sightkit.models.dino_postprocess import dino_postprocess
from sightkit.models.registry import register_model
from sightkit.nn.deformable_attention import SpatialShapes
from sightkit.nn.deformable_transformer import DeformableDecoderLayer, DeformableEncoderLayer
from sightkit.nn.position_encoding import sine_position_encoding

#: How encoder tokens with an anchor past the border (or on padding) propose (see :class:`DINO`).
INVALID_ANCHORS = ("zero", "inf")
#: Frames of the decoder's query position embedding (see :class:`DINO`).
QUERY_POS_FRAMES = ("image", "padded")
#: Logit of the prior probability 0.01 of the classification biases (the focal loss paper's init).
_PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))``, with ``x`` clamped to ``[eps, 1 - eps]`` so it stays finite."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_sine_embedding(boxes: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """DINO's sine embedding of boxes ``[..., 4]`` (``cx, cy, w, h`` in [0, 1]): each coordinate
    times ``2 pi`` gets the interleaved sin/cos of :func:`~sightkit.nn.sine_position_encoding`, in
    the order ``cy, cx, w, h`` (DAB-DETR's). Returns ``[..., 4 * num_pos_feats]``."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    scaled = boxes.float()[..., [1, 0, 2, 3], None] * (2 * math.pi) / dim_t
    embedded = torch.stack((scaled[..., 0::2].sin(), scaled[..., 1::2].cos()), dim=-1).flatten(-2)
    return embedded.flatten(-2).to(boxes.dtype)


@export("models.DINO")
class DINO(nn.Module):
    """The DINO detector (module docstring).

    Args:
        backbone: a :class:`~sightkit.models.MultiScaleBackbone`.
        num_classes: object classes ``C``; the logits have ``C`` entries (sigmoid, no "no object").
        d_model: transformer width.
        nhead: attention heads.
        num_encoder_layers: deformable encoder layers.
        num_decoder_layers: decoder layers (at least 1).
        dim_feedforward: hidden width of the feed-forward blocks.
        dropout: dropout in the transformer (DINO: 0).
        num_feature_levels: ``L``; levels beyond the backbone's come from stride-2 3x3 convolutions.
        n_points: sampling points per head and level.
        num_queries: ``Q``, matching queries (the most detections per image).
        num_denoising: denoising budget (:func:`contrastive_denoising`); 0 turns denoising off.
        label_noise_ratio: label noise of the denoising queries.
        box_noise_scale: box noise of the denoising queries.
        position_temperature: temperature of the image features' sine position encoding
            (:func:`~sightkit.nn.sine_position_encoding`; IDEA-Research's DINO-4scale: 20).
        decoder_norm: a LayerNorm on every decoder layer's output before the class and box
            heads, as IDEA-Research's DINO has; the next layer's reference box is then refined
            from the output before that norm, as there.
        logit_eps: clamp of the inverse sigmoid that turns reference boxes into logits in the
            decoder (IDEA-Research's DINO: 1e-3).
        invalid_anchor: the encoder proposals of tokens whose anchor crosses the image border
            or lies on padding: ``"zero"`` (an anchor of logit 0; padding never proposes) or
            ``"inf"`` (IDEA-Research's DINO: an infinite logit, a box covering everything,
            padding ranked like any token).
        query_pos_frame: the frame in which the decoder's query position embeds each reference
            box: ``"image"`` (relative to the unpadded image, as the box itself) or ``"padded"``
            (IDEA-Research's DINO: relative to the padded batch, the box scaled by the valid
            fraction of the first level). The two differ only on padded images.
    """

    def __init__(
        self,
        backbone: MultiScaleBackbone,
        num_classes: int,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        num_feature_levels: int = 4,
        n_points: int = 4,
        num_queries: int = 900,
        num_denoising: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        position_temperature: float = 10000.0,
        decoder_norm: bool = False,
        logit_eps: float = 1e-5,
        invalid_anchor: str = "zero",
        query_pos_frame: str = "image",
    ) -> None:
        super().__init__()
        if invalid_anchor not in INVALID_ANCHORS:
            raise ValueError(f"invalid_anchor must be one of {INVALID_ANCHORS}, got {invalid_anchor!r}")
        if query_pos_frame not in QUERY_POS_FRAMES:
            raise ValueError(f"query_pos_frame must be one of {QUERY_POS_FRAMES}, got {query_pos_frame!r}")
        if num_classes < 1 or num_queries < 1 or num_decoder_layers < 1 or num_encoder_layers < 0:
            raise ValueError(
                "need num_classes, num_queries, num_decoder_layers >= 1 and num_encoder_layers >= 0, got "
                f"{num_classes}, {num_queries}, {num_decoder_layers} and {num_encoder_layers}"
            )
        if num_feature_levels < len(backbone.channels):
            raise ValueError(
                f"num_feature_levels must be at least the backbone's {len(backbone.channels)} levels, "
                f"got {num_feature_levels}"
            )
        if d_model % 32:
            raise ValueError(f"d_model must be a multiple of 32 (GroupNorm with 32 groups), got {d_model}")
        self.backbone = backbone
        projections = [nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(32, d_model)) for c in backbone.channels]
        in_channels = backbone.channels[-1]
        for _ in range(num_feature_levels - len(backbone.channels)):
            projections.append(
                nn.Sequential(nn.Conv2d(in_channels, d_model, 3, stride=2, padding=1), nn.GroupNorm(32, d_model))
            )
            in_channels = d_model
        self.input_proj = nn.ModuleList(projections)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        layer_args = (d_model, nhead, dim_feedforward, dropout, num_feature_levels, n_points)
        self.encoder_layers = nn.ModuleList(DeformableEncoderLayer(*layer_args) for _ in range(num_encoder_layers))
        # Query selection: each encoder token proposes a class score and a box.
        self.enc_output = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model))
        self.enc_class_head = nn.Linear(d_model, num_classes)
        self.enc_box_head = MLP(d_model, [d_model, d_model, 4], activation_layer=nn.ReLU)
        self.query_content = nn.Embedding(num_queries, d_model)
        # Index num_classes is the padding of the denoising queries: a zero vector without gradient.
        self.denoising_embed = nn.Embedding(num_classes + 1, d_model, padding_idx=num_classes)
        self.query_pos_head = MLP(2 * d_model, [d_model, d_model], activation_layer=nn.ReLU)
        self.decoder_layers = nn.ModuleList(DeformableDecoderLayer(*layer_args) for _ in range(num_decoder_layers))
        self.class_heads = nn.ModuleList(nn.Linear(d_model, num_classes) for _ in range(num_decoder_layers))
        self.box_heads = nn.ModuleList(
            MLP(d_model, [d_model, d_model, 4], activation_layer=nn.ReLU) for _ in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d_model) if decoder_norm else None
        self.position_temperature = position_temperature
        self.logit_eps = logit_eps
        self.invalid_anchor = invalid_anchor
        self.query_pos_frame = query_pos_frame
        self.d_model = d_model
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.normal_(self.level_embed)
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.zeros_(projection[0].bias)
        for head in (self.enc_class_head, *self.class_heads):
            nn.init.constant_(head.bias, _PRIOR_BIAS)
        # Box heads start as "keep the reference box".
        for head in (self.enc_box_head, *self.box_heads):
            nn.init.zeros_(head[-2].weight)
            nn.init.zeros_(head[-2].bias)

    def build_criterion(self, **overrides: Any) -> DINOCriterion:
        """The criterion this model trains with: :class:`DINOCriterion` for its ``C`` classes and
        decoder depth; ``overrides`` go to it."""
        return DINOCriterion(self.num_classes, aux_layers=len(self.decoder_layers) - 1, **overrides)

    #: Detections from the outputs: the sigmoid top-k over queries x classes.
    postprocess = staticmethod(dino_postprocess)
    #: Training targets' boxes: ``cxcywh`` normalised by the unpadded image size (as DETR's).
    target_box_format = "cxcywh"
    #: ``forward`` takes the targets in training (the denoising queries are built from them).
    reads_targets = True
    #: Sigmoid classes: no "no object" logit.
    no_object_class = False
    #: Output heads the bfloat16 inference copy keeps in float32 (``engine.precision``).
    float32_heads = ("enc_class_head", "enc_box_head", "class_heads", "box_heads")

    def forward(
        self, images: Tensor, mask: Tensor | None = None, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Any]:
        """Detect objects.

        Args:
            images: ``[B, 3, H, W]`` float, normalised; padded at the bottom and right.
            mask: ``[B, H, W]`` bool, True on padding; None when nothing is padded.
            targets: in training, ``B`` dicts with ``"labels"`` ``[T_b]`` and ``"boxes"``
                ``[T_b, 4]`` ``cxcywh`` relative to each image's unpadded size: the source of the
                denoising queries. Ignored in eval mode.

        Returns:
            A dict with

            - ``"pred_logits"``: ``[B, Q, C]`` class logits (sigmoid);
            - ``"pred_boxes"``: ``[B, Q, 4]`` ``cxcywh`` in [0, 1] relative to each image's
              unpadded size, see :func:`dino_postprocess`;
            - ``"aux_outputs"``: the same two keys for decoder layers ``1 .. L - 1``;
            - ``"enc_outputs"``: the same two keys for the ``Q`` selected encoder proposals;
            - in training with targets (and ``num_denoising > 0``): ``"dn_outputs"``, a list with
              one dict per decoder layer holding the denoising queries' ``pred_logits`` ``[B, D, C]``
              and ``pred_boxes`` ``[B, D, 4]``, and ``"dn_meta"``, the :class:`DenoisingQueries`.
        """
        _check_inputs(images, mask)
        memory, padding, shapes, valid_ratios = self._encode(images, mask)
        features, anchors_unact = self._propose(memory, padding, shapes, valid_ratios)
        proposals_logits = self.enc_class_head(features)
        batch = images.shape[0]
        scores = proposals_logits.max(-1).values
        if padding is not None and self.invalid_anchor == "zero":
            scores = scores.masked_fill(padding, float("-inf"))
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()) and scores.shape[1] < self.num_queries:
            raise ValueError(
                f"the image gives {scores.shape[1]} encoder tokens, fewer than num_queries = {self.num_queries}; "
                "use larger images or fewer queries"
            )
        top = scores.topk(self.num_queries, dim=1).indices

        def selected(tokens: Tensor) -> Tensor:
            # gather with an expanded index: torch.take_along_dim's broadcast fails torch.export's dynamic batch
            return tokens.gather(1, top[..., None].expand(-1, -1, tokens.shape[-1]))

        enc_logits = selected(proposals_logits)
        # The box head reads only the selected tokens: a per-token MLP, so this equals boxing all
        # N tokens and then selecting, at Q / N of the cost (30 of 336 tokens on dino_r18_tiny).
        enc_boxes_unact = self.enc_box_head(selected(features)) + selected(anchors_unact)
        content = self.query_content.weight[None].expand(batch, -1, -1)
        # The proposals are starting points: the decoder's losses do not flow back into them.
        references = enc_boxes_unact.detach().sigmoid()
        denoising = None
        if self.training and targets is not None and self.num_denoising > 0:
            denoising = contrastive_denoising(
                targets,
                self.num_classes,
                self.num_queries,
                self.num_denoising,
                self.label_noise_ratio,
                self.box_noise_scale,
            )
            content = torch.cat([self.denoising_embed(denoising.labels), content], dim=1)
            references = torch.cat([denoising.boxes.to(references.dtype), references], dim=1)
        logits, boxes = self._decode(content, references, memory, padding, shapes, valid_ratios, denoising)
        split = 0 if denoising is None else denoising.labels.shape[1]
        outputs: dict[str, Any] = {
            "pred_logits": logits[-1][:, split:],
            "pred_boxes": boxes[-1][:, split:],
            "aux_outputs": [
                {"pred_logits": layer_logits[:, split:], "pred_boxes": layer_boxes[:, split:]}
                for layer_logits, layer_boxes in zip(logits[:-1], boxes[:-1], strict=True)
            ],
            "enc_outputs": {"pred_logits": enc_logits, "pred_boxes": enc_boxes_unact.sigmoid()},
        }
        if denoising is not None:
            outputs["dn_outputs"] = [
                {"pred_logits": layer_logits[:, :split], "pred_boxes": layer_boxes[:, :split]}
                for layer_logits, layer_boxes in zip(logits, boxes, strict=True)
            ]
            outputs["dn_meta"] = denoising
        return outputs

    def _encode(self, images: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, SpatialShapes, Tensor]:
        """Multi-scale features through the deformable encoder.

        Returns the memory ``[B, N, D]``, its padding mask ``[B, N]`` (None without padding),
        the ``L`` map sizes, and each level's valid fraction ``[B, L, 2]`` as ``(w, h)``.
        """
        features = self.backbone(images)
        sources = [projection(f) for projection, f in zip(self.input_proj, features, strict=False)]
        for projection in self.input_proj[len(features) :]:
            sources.append(projection(features[-1] if len(sources) == len(features) else sources[-1]))
        shapes = [(src.shape[-2], src.shape[-1]) for src in sources]
        batch = images.shape[0]
        masks = [
            torch.zeros(batch, h, w, dtype=torch.bool, device=images.device)
            if mask is None
            else F.interpolate(mask[:, None].float(), size=(h, w)).to(torch.bool)[:, 0]
            for h, w in shapes
        ]
        # Without padding all images share one encoding: computed for one, expanded over the batch.
        pos = [
            sine_position_encoding(m if mask is not None else m[:1], self.d_model // 2, self.position_temperature)
            .to(images.dtype)
            .flatten(2)
            .transpose(1, 2)
            + self.level_embed[level]
            for level, m in enumerate(masks)
        ]
        valid_ratios = torch.stack([_valid_ratio(m) for m in masks], dim=1)
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in sources], dim=1)
        pos_flat = torch.cat(pos, dim=1).expand(batch, -1, -1)
        padding = None if mask is None else torch.cat([m.flatten(1) for m in masks], dim=1)
        # Each token's centre, relative to its level's valid region, seen on every level.
        centres = torch.cat(
            [_grid_centres(h, w, valid_ratios[:, level], src) for level, (h, w) in enumerate(shapes)], 1
        )
        reference_points = centres[:, :, None] * valid_ratios[:, None]
        memory = src
        for layer in self.encoder_layers:
            memory = layer(memory, pos_flat, reference_points, shapes, padding)
        return memory, padding, shapes, valid_ratios

    def _propose(
        self, memory: Tensor, padding: Tensor | None, shapes: SpatialShapes, valid_ratios: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Every token's proposal features ``[B, N, D]`` (the input of the class and box heads)
        and anchor ``[B, N, 4]`` in logit space: a box at the token's centre, of side
        ``0.05 * 2^level``, which the box head corrects."""
        anchors = []
        for level, (h, w) in enumerate(shapes):
            centres = _grid_centres(h, w, valid_ratios[:, level], memory)
            anchors.append(torch.cat([centres, torch.full_like(centres, 0.05 * 2.0**level)], dim=-1))
        anchors = torch.cat(anchors, dim=1)
        # Anchors reaching the border, and padding tokens, propose nothing useful (Deformable DETR).
        valid = ((anchors > 0.01) & (anchors < 0.99)).all(-1, keepdim=True)
        if padding is not None:
            valid = valid & ~padding[..., None]
        fill = float("inf") if self.invalid_anchor == "inf" else 0.0
        anchors_unact = torch.where(valid, inverse_sigmoid(anchors), torch.full_like(anchors, fill))
        # a product rather than masked_fill, 5-7x slower with the mask broadcast over the channels
        return self.enc_output(memory * valid.to(memory.dtype)), anchors_unact

    def _decode(
        self,
        content: Tensor,
        references: Tensor,
        memory: Tensor,
        padding: Tensor | None,
        shapes: SpatialShapes,
        valid_ratios: Tensor,
        denoising: DenoisingQueries | None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Every decoder layer's logits and refined boxes for all queries (denoising first)."""
        attn_mask = None if denoising is None else denoising.attn_mask
        level_scale = torch.cat([valid_ratios, valid_ratios], dim=-1)[:, None]  # [B, 1, L, 4]
        output = content
        logits, boxes = [], []
        for layer, class_head, box_head in zip(self.decoder_layers, self.class_heads, self.box_heads, strict=True):
            reference = references.detach()
            level_boxes = reference[:, :, None] * level_scale
            embedded = reference if self.query_pos_frame == "image" else level_boxes[:, :, 0]
            query_pos = self.query_pos_head(box_sine_embedding(embedded, self.d_model // 2))
            output = layer(output, query_pos, level_boxes, memory, shapes, padding, attn_mask)
            if self.decoder_norm is None:
                # Look forward twice: the undetached reference lets this box loss train the previous layer.
                references = (box_head(output) + inverse_sigmoid(references, self.logit_eps)).sigmoid()
                logits.append(class_head(output))
                boxes.append(references)
                continue
            # IDEA-Research's layout: the heads read the normalised output; the next reference
            # is refined from the output before the norm.
            normed = self.decoder_norm(output)
            logits.append(class_head(normed))
            boxes.append((box_head(normed) + inverse_sigmoid(references, self.logit_eps)).sigmoid())
            references = (box_head(output) + inverse_sigmoid(reference, self.logit_eps)).sigmoid()
        return logits, boxes


def _valid_ratio(mask: Tensor) -> Tensor:
    """``[B, 2]``: the unpadded fraction ``(w, h)`` of each image's ``[H, W]`` feature map."""
    valid = ~mask
    height = valid[:, :, 0].sum(1).to(torch.float32) / mask.shape[1]
    width = valid[:, 0, :].sum(1).to(torch.float32) / mask.shape[2]
    return torch.stack([width, height], dim=-1)


def _grid_centres(height: int, width: int, valid_ratio: Tensor, like: Tensor) -> Tensor:
    """``[B, h*w, 2]`` pixel centres ``(x, y)`` of an ``h x w`` map, row-major, normalised by
    each image's valid width and height (``valid_ratio`` ``[B, 2]`` times the map size)."""
    ys = torch.arange(height, dtype=like.dtype, device=like.device) + 0.5
    xs = torch.arange(width, dtype=like.dtype, device=like.device) + 0.5
    ys, xs = torch.meshgrid(ys, xs, indexing="ij")
    sizes = torch.stack([like.new_full((), width), like.new_full((), height)]) * valid_ratio.to(like.dtype)
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)[None] / sizes[:, None]


@export("models.build_dino")
def build_dino(
    num_classes: int = 91,
    backbone: str = "resnet50",
    backbone_stages: tuple[int, ...] = (2, 3, 4),
    trainable_stages: int = 3,
    backbone_norm: str = "frozen_bn",
    d_model: int = 256,
    nhead: int = 8,
    num_encoder_layers: int = 6,
    num_decoder_layers: int = 6,
    dim_feedforward: int = 2048,
    dropout: float = 0.0,
    num_feature_levels: int = 4,
    n_points: int = 4,
    num_queries: int = 900,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    position_temperature: float = 10000.0,
    decoder_norm: bool = False,
    logit_eps: float = 1e-5,
    invalid_anchor: str = "zero",
    query_pos_frame: str = "image",
) -> DINO:
    """Build a :class:`DINO` from plain settings; the defaults are DINO-4scale's (``dino_r50``).

    ``backbone``, ``trainable_stages`` and ``backbone_norm`` go to :func:`build_backbone` (cut
    after the last of ``backbone_stages``), ``backbone_stages`` to :class:`MultiScaleBackbone`,
    the rest to :class:`DINO`.
    """
    resnet = build_backbone(backbone, backbone_stages[-1], trainable_stages, backbone_norm)
    return DINO(
        MultiScaleBackbone(resnet, tuple(backbone_stages)),
        num_classes=num_classes,
        d_model=d_model,
        nhead=nhead,
        num_encoder_layers=num_encoder_layers,
        num_decoder_layers=num_decoder_layers,
        dim_feedforward=dim_feedforward,
        dropout=dropout,
        num_feature_levels=num_feature_levels,
        n_points=n_points,
        num_queries=num_queries,
        num_denoising=num_denoising,
        label_noise_ratio=label_noise_ratio,
        box_noise_scale=box_noise_scale,
        position_temperature=position_temperature,
        decoder_norm=decoder_norm,
        logit_eps=logit_eps,
        invalid_anchor=invalid_anchor,
        query_pos_frame=query_pos_frame,
    )


@register_model(task="detect")
def dino_r50(**overrides: Any) -> DINO:
    """DINO-4scale: ResNet-50 (layer2-4 trained, frozen BN) read at strides 8/16/32 plus a
    stride-64 level, d_model 256, 8 heads, 6+6 layers, FFN 2048, 900 queries, 4 points, 100
    denoising pairs. Keyword arguments override :func:`build_dino`'s settings."""
    return build_dino(**overrides)


@register_model(task="detect")
def dino_r18_tiny(**overrides: Any) -> DINO:
    """A small DINO for CPU training from scratch, sized like ``detr_r18_tiny``: ResNet-18 up
    to layer3 (all stages trained, ordinary BatchNorm) read at strides 8 and 16, a stride-32
    level from a convolution, d_model 128, 4 heads, 1+3 layers, FFN 512, 30 queries, 30
    denoising copies. Keyword arguments override these settings."""
    settings: dict[str, Any] = {
        "backbone": "resnet18",
        "backbone_stages": (2, 3),
        "trainable_stages": 4,
        "backbone_norm": "bn",
        "d_model": 128,
        "nhead": 4,
        "num_encoder_layers": 1,
        "num_decoder_layers": 3,
        "dim_feedforward": 512,
        "num_feature_levels": 3,
        "num_queries": 30,
        "num_denoising": 30,
    }
    return build_dino(**{**settings, **overrides})
