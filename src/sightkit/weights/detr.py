"""DETR checkpoints -> :func:`~sightkit.models.detr_r50` (Carion et al., ECCV 2020).

Two published layouts of the same network:

- facebookresearch/detr (``torch.hub.load("facebookresearch/detr", "detr_resnet50")``,
  ``https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth`` and ``detr-r101-2c7b67e5.pth``):
  a checkpoint dict whose ``model`` entry names the backbone ``backbone.0.body`` (torchvision
  ResNet names), the transformer ``transformer.encoder.layers.i`` /
  ``transformer.decoder.layers.i`` with ``torch.nn.MultiheadAttention`` (``in_proj_weight``)
  and ``multihead_attn`` for the cross-attention, and the box MLP ``bbox_embed.layers.j``;
- transformers' hub layout (``facebook/detr-resnet-50``, ``facebook/detr-resnet-101``):
  ``model.backbone.conv_encoder.model`` (a timm ResNet, torchvision's names; on the
  ``no_timm`` revisions transformers' own ResNet, renamed by :mod:`sightkit.weights.resnet`), separate
  ``q_proj``/``k_proj``/``v_proj`` projections, ``self_attn_layer_norm`` /
  ``encoder_attn_layer_norm`` / ``final_layer_norm``, ``fc1``/``fc2``, ``model.decoder.layernorm``,
  ``class_labels_classifier`` and ``bbox_predictor.layers.j``.

sightkit's :class:`~sightkit.models.DETR` keeps ``nn.MultiheadAttention``'s packed ``in_proj``
(query, key and value rows in that order) and torchvision's ``MLP``, whose linear layers sit
at indices 0, 3 and 6 (each followed by an activation and a dropout). The settings that
differ from ``detr_r50`` (backbone depth, widths, layer counts, queries) are read from the
tensor shapes; the number of heads, which no shape shows, from the hub's ``config.json``,
else DETR's 8.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sightkit.weights import resnet
from sightkit.weights.coco import COCO_91_NAMES
from sightkit.weights.layout import Converted, rename
from sightkit.weights.sources import Fetched

FAMILY = "detr"
MODEL = "detr_r50"
#: detr_r50's settings, which a converted checkpoint's ``model_args`` override where it differs.
_DEFAULTS = {
    "backbone": "resnet50",
    "d_model": 256,
    "nhead": 8,
    "num_encoder_layers": 6,
    "num_decoder_layers": 6,
    "dim_feedforward": 2048,
    "num_queries": 100,
    "normalize_before": False,
}
#: DETR's evaluation size: shorter side 800, longer side at most 1333.
IMGSZ, MAX_SIZE = 800, 1333

_TRANSFORMERS_BACKBONE = "model.backbone.conv_encoder.model."
_FACEBOOK_BACKBONE = "backbone.0.body."


def recognise_facebookresearch(state: Mapping[str, Tensor]) -> bool:
    return f"{_FACEBOOK_BACKBONE}conv1.weight" in state and "query_embed.weight" in state


def recognise_transformers(state: Mapping[str, Tensor]) -> bool:
    backbone = (
        f"{_TRANSFORMERS_BACKBONE}conv1.weight",
        f"{_TRANSFORMERS_BACKBONE}embedder.embedder.convolution.weight",
    )
    return any(key in state for key in backbone) and "model.decoder.layernorm.weight" in state


def from_facebookresearch(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/detr names -> sightkit's DETR names (module docstring)."""
    out = _backbone(state, _FACEBOOK_BACKBONE)
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        if key.startswith("bbox_embed.layers."):
            index, _, param = key.removeprefix("bbox_embed.layers.").partition(".")
            out[f"bbox_embed.{3 * int(index)}.{param}"] = value
            continue
        key = re.sub(r"^transformer\.(encoder|decoder)\.layers\.", r"transformer.\1_layers.", key)
        key = key.replace(".multihead_attn.", ".cross_attn.").replace(".linear1.", ".ffn.linear1.")
        key = key.replace(".linear2.", ".ffn.linear2.")
        key = key.replace("transformer.decoder.norm.", "transformer.decoder_norm.")
        key = key.replace("transformer.encoder.norm.", "transformer.encoder_norm.")
        out[key] = value
    return out


_TRANSFORMERS_LAYER = {
    "self_attn_layer_norm": "norm1",
    "fc1": "ffn.linear1",
    "fc2": "ffn.linear2",
    "self_attn": "self_attn",
    "encoder_attn": "cross_attn",
}


def from_transformers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers' hub names -> sightkit's DETR names (module docstring)."""
    out = _backbone(state, _TRANSFORMERS_BACKBONE)
    out.update(rename(state, "model.input_projection.", "input_proj."))
    out.update(rename(state, "model.query_position_embeddings.", "query_embed."))
    out.update(rename(state, "model.decoder.layernorm.", "transformer.decoder_norm."))
    out.update(rename(state, "class_labels_classifier.", "class_embed."))
    for key, value in state.items():
        if key.startswith("bbox_predictor.layers."):
            index, _, param = key.removeprefix("bbox_predictor.layers.").partition(".")
            out[f"bbox_embed.{3 * int(index)}.{param}"] = value
    projections: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        match = re.match(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(.+)$", key)
        if match is None:
            continue
        stack, index, module, rest = match.groups()
        prefix = f"transformer.{stack}_layers.{index}."
        if module == "final_layer_norm":
            # The encoder layer's second norm, the decoder layer's third.
            out[f"{prefix}{'norm3' if stack == 'decoder' else 'norm2'}.{rest}"] = value
        elif module == "encoder_attn_layer_norm":
            out[f"{prefix}norm2.{rest}"] = value
        elif rest.split(".")[0] in ("q_proj", "k_proj", "v_proj"):
            projection, param = rest.split(".")
            projections.setdefault(f"{prefix}{_TRANSFORMERS_LAYER[module]}.in_proj_{param}", {})[projection] = value
        else:
            out[f"{prefix}{_TRANSFORMERS_LAYER.get(module, module)}.{rest}"] = value
    for key, parts in projections.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise ValueError(f"DETR checkpoint: {key} needs q_proj, k_proj and v_proj, found only {sorted(parts)}")
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


def _torchvision_backbone(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The backbone's weights under torchvision's ResNet names (timm's are the same; transformers'
    own ResNet is renamed)."""
    body = rename(state, prefix, "")
    return resnet.from_transformers(body) if resnet.is_transformers_resnet(body) else body


def _backbone(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {f"backbone.body.{k}": v for k, v in resnet.to_body(_torchvision_backbone(state, prefix)).items()}


def settings(state: Mapping[str, Tensor], backbone: str, nhead: int | None) -> dict[str, Any]:
    """The :func:`~sightkit.models.build_detr` settings of converted weights, read from their shapes."""

    def count(stack: str) -> int:
        return len({m[1] for k in state if (m := re.match(rf"transformer\.{stack}_layers\.(\d+)\.", k))})

    return {
        "backbone": backbone,
        "d_model": state["query_embed.weight"].shape[1],
        "nhead": nhead or _DEFAULTS["nhead"],
        "num_encoder_layers": count("encoder"),
        "num_decoder_layers": count("decoder"),
        "dim_feedforward": state["transformer.decoder_layers.0.ffn.linear1.weight"].shape[0],
        "num_queries": state["query_embed.weight"].shape[0],
        "normalize_before": "transformer.encoder_norm.weight" in state,
    }


def convert(fetched: Fetched) -> Converted:
    """A DETR checkpoint in either layout -> ``detr_r50`` weights and detect metadata."""
    state = fetched.state
    if recognise_transformers(state):
        ours, layout, prefix = from_transformers(state), "transformers", _TRANSFORMERS_BACKBONE
    else:
        ours, layout, prefix = from_facebookresearch(state), "facebookresearch", _FACEBOOK_BACKBONE
    backbone = resnet.resnet_name(_torchvision_backbone(state, prefix))
    found = settings(ours, backbone, fetched.config.get("encoder_attention_heads"))
    model_args = {k: v for k, v in found.items() if v != _DEFAULTS[k]}
    num_classes = ours["class_embed.weight"].shape[0] - 1  # the last logit is "no object"
    classes = class_names(num_classes, fetched.config.get("id2label"))
    metadata = detect_metadata(classes, fetched.source, f"{FAMILY}/{layout}")
    return Converted(f"{FAMILY}/{layout}", MODEL, model_args, ours, metadata)


def detect_metadata(classes: list[str], source: str, layout: str) -> dict[str, str]:
    """The metadata of a detect weights file converted from a DETR-family checkpoint of the papers'
    COCO recipe: class ``i`` is COCO category id ``i``, DETR's test sizes, ImageNet normalisation."""
    return {
        "task": "detect",
        "classes": json.dumps(classes),
        "category_ids": json.dumps(list(range(len(classes)))),
        "imgsz": str(IMGSZ),
        "max_size": str(MAX_SIZE),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "source": source,
        "source_layout": layout,
    }


def class_names(num_classes: int, id2label: Mapping[str, str] | None) -> list[str]:
    """Names of DETR's ``num_classes`` classes: the hub config's ``id2label`` when given (ids it
    lacks are ``"N/A"``), COCO's for 91 classes, else ``class_<i>``."""
    if id2label:
        return [str(id2label.get(str(i), "N/A")) for i in range(num_classes)]
    if num_classes == len(COCO_91_NAMES):
        return list(COCO_91_NAMES)
    return [f"class_{i}" for i in range(num_classes)]
