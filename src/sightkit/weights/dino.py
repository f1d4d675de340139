"""IDEA-Research DINO-4scale checkpoints (``checkpoint0011_4scale.pth``, ``checkpoint0033_4scale.pth``
of github.com/IDEA-Research/DINO) -> :func:`~sightkit.models.dino_r50` (Zhang et al., ICLR 2023).

The checkpoint's ``model`` entry names the backbone ``backbone.0.body`` (torchvision's
ResNet), the transformer ``transformer.encoder.layers.i`` / ``transformer.decoder.layers.i``
(deformable attention with sightkit's parameter names; a decoder layer's ``norm2`` follows
its self-attention and ``norm1`` its cross-attention, the other way round from sightkit),
the query selection ``transformer.enc_output`` / ``enc_output_norm`` /
``enc_out_class_embed`` / ``enc_out_bbox_embed``, the learned query content
``transformer.tgt_embed``, the query position head ``transformer.decoder.ref_point_head``,
the decoder output norm ``transformer.decoder.norm``, the per-layer heads ``class_embed.i``
/ ``bbox_embed.i`` (shared by every layer in DINO-4scale; ``transformer.decoder`` holds a
second reference to them) and the denoising label embedding ``label_enc``.

The network differs from sightkit's default DINO in five places, which ``dino_r50``'s options
reproduce: the image position encoding's temperature (20), the decoder output LayerNorm, the
clamp of its inverse sigmoid (1e-3), proposals of border and padding tokens (an infinite box
logit), and, on padded batches, the frame of the decoder's query position.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from sightkit.weights import resnet
from sightkit.weights.detr import class_names, detect_metadata
from sightkit.weights.layout import Converted, rename
from sightkit.weights.sources import Fetched

FAMILY = "dino"
MODEL = "dino_r50"
#: The dino_r50 options of IDEA-Research's network (module docstring).
IDEA_OPTIONS: dict[str, Any] = {
    "position_temperature": 20.0,
    "decoder_norm": True,
    "logit_eps": 1e-3,
    "invalid_anchor": "inf",
    "query_pos_frame": "padded",
}
_DEFAULTS = {
    "backbone": "resnet50",
    "d_model": 256,
    "num_encoder_layers": 6,
    "num_decoder_layers": 6,
    "dim_feedforward": 2048,
    "num_feature_levels": 4,
    "n_points": 4,
    "num_queries": 900,
}
_BACKBONE = "backbone.0.body."
#: IDEA decoder-layer module -> sightkit's (the two attention norms swap places).
_DECODER_LAYER = {"norm2": "norm1", "norm1": "norm2", "linear1": "ffn.linear1", "linear2": "ffn.linear2"}
_ENCODER_LAYER = {"linear1": "ffn.linear1", "linear2": "ffn.linear2"}


def recognise(state: Mapping[str, Tensor]) -> bool:
    return "transformer.tgt_embed.weight" in state and "transformer.enc_out_class_embed.weight" in state


def from_idea(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """IDEA-Research DINO names -> sightkit's DINO names (module docstring)."""
    out = {f"backbone.body.{k}": v for k, v in resnet.to_body(rename(state, _BACKBONE, "")).items()}
    for old, new in (
        ("input_proj.", "input_proj."),
        ("transformer.level_embed", "level_embed"),
        ("transformer.enc_output.", "enc_output.0."),
        ("transformer.enc_output_norm.", "enc_output.1."),
        ("transformer.enc_out_class_embed.", "enc_class_head."),
        ("transformer.tgt_embed.", "query_content."),
        ("transformer.decoder.norm.", "decoder_norm."),
        ("label_enc.", "denoising_embed."),
    ):
        out.update(rename(state, old, new))
    for key, value in state.items():
        if match := re.match(r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(.+)$", key):
            stack, index, module, rest = match.groups()
            renames = _DECODER_LAYER if stack == "decoder" else _ENCODER_LAYER
            out[f"{stack}_layers.{index}.{renames.get(module, module)}.{rest}"] = value
        elif match := re.match(r"^(class_embed)\.(\d+)\.(.+)$", key):
            out[f"class_heads.{match[2]}.{match[3]}"] = value
        elif match := re.match(r"^bbox_embed\.(\d+)\.layers\.(\d+)\.(.+)$", key):
            out[f"box_heads.{match[1]}.{3 * int(match[2])}.{match[3]}"] = value
        elif match := re.match(r"^transformer\.enc_out_bbox_embed\.layers\.(\d+)\.(.+)$", key):
            out[f"enc_box_head.{3 * int(match[1])}.{match[2]}"] = value
        elif match := re.match(r"^transformer\.decoder\.ref_point_head\.layers\.(\d+)\.(.+)$", key):
            out[f"query_pos_head.{3 * int(match[1])}.{match[2]}"] = value
    # transformer.decoder.class_embed / bbox_embed are second references to the heads above.
    return out


def settings(state: Mapping[str, Tensor], backbone: str) -> dict[str, Any]:
    """The :func:`~sightkit.models.build_dino` settings of converted weights, from their shapes
    (8 heads, which no shape shows alone, as in every published DINO)."""

    def count(stack: str) -> int:
        return len({m[1] for k in state if (m := re.match(rf"{stack}_layers\.(\d+)\.", k))})

    levels = state["level_embed"].shape[0]
    offsets = state["decoder_layers.0.cross_attn.sampling_offsets.weight"].shape[0]
    return {
        "backbone": backbone,
        "d_model": state["level_embed"].shape[1],
        "num_encoder_layers": count("encoder"),
        "num_decoder_layers": count("decoder"),
        "dim_feedforward": state["decoder_layers.0.ffn.linear1.weight"].shape[0],
        "num_feature_levels": levels,
        "n_points": offsets // (8 * levels * 2),
        "num_queries": state["query_content.weight"].shape[0],
    }


def convert(fetched: Fetched) -> Converted:
    """An IDEA-Research DINO checkpoint -> ``dino_r50`` weights (with :data:`IDEA_OPTIONS`) and detect metadata."""
    ours = from_idea(fetched.state)
    backbone = resnet.resnet_name(rename(fetched.state, _BACKBONE, ""))
    found = settings(ours, backbone)
    model_args = {k: v for k, v in found.items() if v != _DEFAULTS[k]} | IDEA_OPTIONS
    num_classes = ours["class_heads.0.weight"].shape[0]
    metadata = detect_metadata(class_names(num_classes, None), fetched.source, f"{FAMILY}/idea")
    return Converted(f"{FAMILY}/idea", MODEL, model_args, ours, metadata)
