"""insightface arcface_torch backbones (``backbone.pth`` of its model zoo) -> sightkit's face embedders.

- IResNet-18/34/50/100 (``r18`` ... ``r100``): sightkit's :class:`~sightkit.models.IResNet`
  has insightface's names (``conv1``, ``bn1``, ``prelu``, ``layer1.0.bn1``, ..., ``fc``,
  ``features``), so the state dict loads as it is; the depth is read from the block counts.
- MobileFaceNet (``mbf``, scale 2): insightface nests its bottlenecks (``layers.3.layers.j``
  inside a ``Residual``) and wraps every convolution in a ``ConvBlock``/``LinearBlock``
  (``.layers.0`` conv, ``.1`` BatchNorm, ``.2`` PReLU); sightkit's :class:`~sightkit.models.MobileFaceNet`
  keeps one flat ``layers`` sequence of the same blocks and names the head ``gdc`` (the
  global depthwise convolution), ``linear`` and ``features``.

Embedders take ``(pixel / 255 - 0.5) / 0.5`` RGB crops of 112 x 112, insightface's input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from torch import Tensor

from sightkit.data.faces import FACE_MEAN, FACE_STD
from sightkit.weights.layout import Converted
from sightkit.weights.sources import Fetched

FAMILY = "insightface"
#: IResNet blocks per stage -> registered model.
_IRESNETS = {
    (2, 2, 2, 2): "iresnet18",
    (3, 4, 6, 3): "iresnet34",
    (3, 4, 14, 3): "iresnet50",
    (3, 13, 30, 3): "iresnet100",
}


def recognise_iresnet(state: Mapping[str, Tensor]) -> bool:
    return "prelu.weight" in state and "features.running_mean" in state and "layer1.0.bn1.weight" in state


def recognise_mobilefacenet(state: Mapping[str, Tensor]) -> bool:
    return "conv_sep.layers.0.weight" in state and "features.layers.0.layers.0.weight" in state


def from_mobilefacenet(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """insightface's MobileFaceNet names -> sightkit's (module docstring)."""
    # insightface's top-level blocks, in order; a Residual holds several bottlenecks that
    # sightkit's flat sequence lists one by one.
    top = sorted({int(m[1]) for k in state if (m := re.match(r"layers\.(\d+)\.", k))})
    flat: list[str] = []  # insightface prefix of each of sightkit's layers.<i>
    for index in top:
        inner = sorted({int(m[1]) for k in state if (m := re.match(rf"layers\.{index}\.layers\.(\d+)\.layers\.", k))})
        nested = any(re.match(rf"layers\.{index}\.layers\.\d+\.layers\.\d+\.layers\.", k) for k in state)
        # A Residual's children are DepthWise blocks, themselves holding ConvBlocks (three levels of `.layers`).
        flat += [f"layers.{index}.layers.{j}." for j in inner] if nested else [f"layers.{index}."]
    flat.append("conv_sep.")
    out: dict[str, Tensor] = {}
    for position, prefix in enumerate(flat):
        for key, value in state.items():
            if key.startswith(prefix):
                out[f"layers.{position}." + _unwrap(key.removeprefix(prefix))] = value
    head = {"features.layers.0.layers.": "gdc.", "features.layers.2.": "linear.", "features.layers.3.": "features."}
    for key, value in state.items():
        for old, new in head.items():
            if key.startswith(old):
                out[new + key.removeprefix(old)] = value
    return out


def _unwrap(key: str) -> str:
    """``layers.0.weight`` (a ConvBlock's conv) -> ``0.weight``; ``layers.1.layers.2.weight``
    (a DepthWise's second ConvBlock's PReLU) -> ``layers.1.2.weight``."""
    key = key.removeprefix("layers.")
    return re.sub(r"^(\d+)\.layers\.", r"layers.\1.", key) if re.match(r"^\d+\.layers\.", key) else key


def convert(fetched: Fetched) -> Converted:
    """An arcface_torch ``backbone.pth`` (IResNet or MobileFaceNet) -> face-embedder weights."""
    state = fetched.state
    if recognise_mobilefacenet(state):
        ours = from_mobilefacenet(state)
        scale = ours["layers.0.0.weight"].shape[0] // 64
        model, embedding, layout = "mobilefacenet", ours["linear.weight"].shape[0], "mobilefacenet"
        if scale != 2:
            raise ValueError(
                f"{fetched.source}: a MobileFaceNet of scale {scale}; sightkit registers insightface's mbf (2)"
            )
    else:
        ours = dict(state)
        blocks = tuple(
            len({m[1] for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}) for stage in range(1, 5)
        )
        if blocks not in _IRESNETS:
            raise ValueError(
                f"{fetched.source}: an IResNet with {blocks} blocks per stage is none of {sorted(_IRESNETS.values())}"
            )
        model, embedding, layout = _IRESNETS[blocks], state["fc.weight"].shape[0], "iresnet"
    metadata = {
        "task": "face",
        "kind": "embedder",
        "embedding": str(embedding),
        "imgsz": "112",
        "mean": json.dumps(list(FACE_MEAN)),
        "std": json.dumps(list(FACE_STD)),
        "classes": "0",
        "source": fetched.source,
        "source_layout": f"{FAMILY}/{layout}",
    }
    return Converted(f"{FAMILY}/{layout}", model, {}, ours, metadata, prefix="embedder.")
