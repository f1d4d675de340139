"""DETR: a CNN backbone, a transformer encoder-decoder and a set of learned object queries,
each decoded into one class (or "no object") and one box (Carion et al., "End-to-End Object
Detection with Transformers", ECCV 2020).

Registered models (``create_model(name, **overrides)``):

============== ======================================= ====== ======= ===== ======= ==== =======
name           backbone                                stride d_model heads enc+dec FFN  queries
============== ======================================= ====== ======= ===== ======= ==== =======
detr_r50       ResNet-50, frozen BN, layer2-4 train    32     256     8     6+6     2048 100
detr_r18_tiny  ResNet-18 to layer3, BatchNorm, all     16     128     4     2+2     512  20
============== ======================================= ====== ======= ===== ======= ==== =======

``detr_r50`` is the paper's configuration (41.5 M parameters for 91 classes, as the paper's
41 M). ``detr_r18_tiny`` (3.8 M) is sized to learn the synthetic shapes data from scratch on
two CPU cores: cutting ResNet-18 after layer3 removes 3/4 of its parameters (layer4 holds
8.4 M of 11.2 M) and a quarter of its compute, and leaves a stride-16 feature map, fine
enough for small shapes (a 256-pixel image gives 16x16 = 256 tokens); without pretrained
weights every stage trains, with ordinary BatchNorm (frozen BN would leave a randomly
initialised network without any normalisation, see :mod:`sightkit.models.backbones`); a
128-wide, 2+2-layer transformer is ample for a handful of objects per image, and 20 queries
cover them with room to spare.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MLP

from sightkit._api import export
from sightkit.losses.set_criterion import SetCriterion
from sightkit.models.backbones import build_backbone
from sightkit.models.detr_postprocess import detr_postprocess
from sightkit.models.registry import register_model
from sightkit.nn.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from sightkit.nn.transformer import Transformer

POSITION_ENCODINGS = ("sine", "learned")


@export("models.DETR")
class DETR(nn.Module):
    """The DETR detector.

    Args:
        backbone: maps ``[B, 3, H, W]`` images to ``[B, C, h, w]`` features and has an integer
            attribute ``num_channels`` (``C``); see :func:`build_backbone`.
        transformer: the encoder-decoder; its ``d_model`` sets the width of the heads.
        num_classes: object classes ``C``; labels are ``0 .. C - 1`` and index ``C`` of the
            logits is "no object".
        num_queries: object queries ``Q``, the most objects one image can have.
        position_encoding: ``"sine"`` (fixed, follows the padding mask) or ``"learned"``.
        aux_loss: also return the predictions of every earlier decoder layer.

    What the detection task reads from every detector family (DETR, DINO, VFNet) is declared on
    its class: :meth:`build_criterion`, :attr:`postprocess`, :attr:`target_box_format` (the boxes
    of the training targets), :attr:`reads_targets` (``forward`` takes the targets in training)
    and :attr:`no_object_class` (the criterion weighs a "no object" class, ``eos_coef``).
    """

    #: Training targets' boxes: ``cxcywh`` normalised by the unpadded image size.
    target_box_format = "cxcywh"
    #: ``forward`` does not take the targets.
    reads_targets = False
    #: The last logit is "no object"; its cross-entropy weight is the criterion's ``eos_coef``.
    no_object_class = True
    #: Output heads the bfloat16 inference copy keeps in float32 (``engine.precision``).
    float32_heads = ("class_embed", "bbox_embed")
    #: Detections from the outputs: softmax over classes, "no object" left out.
    postprocess = staticmethod(detr_postprocess)

    def __init__(
        self,
        backbone: nn.Module,
        transformer: Transformer,
        num_classes: int,
        num_queries: int = 100,
        position_encoding: str = "sine",
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1 or num_queries < 1:
            raise ValueError(f"num_classes and num_queries must be >= 1, got {num_classes} and {num_queries}")
        if position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding must be one of {POSITION_ENCODINGS}, got {position_encoding!r}")
        d_model = transformer.d_model
        self.backbone = backbone
        self.input_proj = nn.Conv2d(backbone.num_channels, d_model, kernel_size=1)
        self.position_encoding: nn.Module = (
            PositionEmbeddingSine(d_model // 2)
            if position_encoding == "sine"
            else PositionEmbeddingLearned(d_model // 2)
        )
        self.transformer = transformer
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.bbox_embed = MLP(d_model, [d_model, d_model, 4], activation_layer=nn.ReLU)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss

    def build_criterion(self, **overrides: Any) -> SetCriterion:
        """The criterion this model trains with: :class:`SetCriterion` for its ``C`` classes, with
        one auxiliary loss per earlier decoder layer when ``aux_loss``; ``overrides`` (``eos_coef``,
        loss weights) go to it."""
        aux_layers = len(self.transformer.decoder_layers) - 1 if self.aux_loss else 0
        return SetCriterion(self.num_classes, **{"aux_layers": aux_layers, **overrides})

    def forward(self, images: Tensor, mask: Tensor | None = None) -> dict[str, Any]:
        """Detect objects.

        Args:
            images: ``[B, 3, H, W]`` float, normalised; a batch of images of different sizes
                is padded at the bottom and right to a common ``H, W``.
            mask: ``[B, H, W]`` bool, True on padding; None when nothing is padded.

        Returns:
            A dict with

            - ``"pred_logits"``: ``[B, Q, C + 1]`` class logits, the last one "no object";
            - ``"pred_boxes"``: ``[B, Q, 4]`` boxes as ``cxcywh`` in [0, 1], relative to each
              image's own (unpadded) height and width, as in DETR: normalise target boxes by
              the image size before padding, and scale predictions by it (or by the original
              size before resizing) to get pixels, see :func:`detr_postprocess`;
            - ``"aux_outputs"`` (with ``aux_loss``): a list of ``L - 1`` dicts with the same two
              keys, the predictions of decoder layers ``1 .. L - 1``.
        """
        _check_inputs(images, mask)
        features = self.backbone(images)
        if mask is None:
            feature_mask = torch.zeros(
                features.shape[0], *features.shape[-2:], dtype=torch.bool, device=features.device
            )
            # Without padding no key needs masking, and attention runs without a mask (faster).
            key_padding_mask = None
        else:
            feature_mask = F.interpolate(mask[:, None].float(), size=features.shape[-2:]).to(torch.bool)[:, 0]
            key_padding_mask = feature_mask.flatten(1)
        pos = self.position_encoding(feature_mask).to(features.dtype).flatten(2).transpose(1, 2)
        src = self.input_proj(features).flatten(2).transpose(1, 2)
        hs, _ = self.transformer(src, key_padding_mask, self.query_embed.weight, pos)
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        outputs: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            outputs["aux_outputs"] = [
                {"pred_logits": layer_logits, "pred_boxes": layer_boxes}
                for layer_logits, layer_boxes in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        return outputs


def _check_inputs(images: Tensor, mask: Tensor | None) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        got = f"{images.dtype} of shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape [B, 3, H, W], got {got}")
    if mask is None:
        return
    batch, _, height, width = images.shape
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (batch, height, width):
        got = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape [B, H, W] = {[batch, height, width]}, got {got}")


@export("models.build_detr")
def build_detr(
    num_classes: int = 91,
    backbone: str = "resnet50",
    last_stage: int = 4,
    trainable_stages: int = 3,
    backbone_norm: str = "frozen_bn",
    d_model: int = 256,
    nhead: int = 8,
    num_encoder_layers: int = 6,
    num_decoder_layers: int = 6,
    dim_feedforward: int = 2048,
    dropout: float = 0.1,
    num_queries: int = 100,
    normalize_before: bool = False,
    position_encoding: str = "sine",
    aux_loss: bool = True,
) -> DETR:
    """Build a :class:`DETR` from plain settings; the defaults are the paper's (``detr_r50``).

    ``num_classes=91`` is DETR's COCO setting (the largest COCO category id plus one); pass
    your dataset's number of classes. ``backbone``, ``last_stage``, ``trainable_stages`` and
    ``backbone_norm`` (its ``norm``) go to :func:`build_backbone`; the rest to
    :class:`Transformer` and :class:`DETR`.
    """
    transformer = Transformer(
        d_model=d_model,
        nhead=nhead,
        num_encoder_layers=num_encoder_layers,
        num_decoder_layers=num_decoder_layers,
        dim_feedforward=dim_feedforward,
        dropout=dropout,
        normalize_before=normalize_before,
        return_intermediate=aux_loss,
    )
    return DETR(
        build_backbone(backbone, last_stage, trainable_stages, backbone_norm),
        transformer,
        num_classes=num_classes,
        num_queries=num_queries,
        position_encoding=position_encoding,
        aux_loss=aux_loss,
    )


@register_model(task="detect")
def detr_r50(**overrides: Any) -> DETR:
    """The paper's DETR: ResNet-50 (layer2-4 trained), d_model 256, 8 heads, 6+6 layers, FFN
    2048, 100 queries, dropout 0.1. Keyword arguments override :func:`build_detr`'s settings."""
    return build_detr(**overrides)


@register_model(task="detect")
def detr_r18_tiny(**overrides: Any) -> DETR:
    """A small DETR for CPU training from scratch: ResNet-18 up to layer3 (stride 16, all
    stages trained, ordinary BatchNorm), d_model 128, 4 heads, 2+2 layers, FFN 512, 20 queries (see the module
    docstring for why). Keyword arguments override these settings."""
    settings: dict[str, Any] = {
        "backbone": "resnet18",
        "last_stage": 3,
        "trainable_stages": 4,
        "backbone_norm": "bn",
        "d_model": 128,
        "nhead": 4,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "dim_feedforward": 512,
        "num_queries": 20,
    }
    return build_detr(**{**settings, **overrides})
