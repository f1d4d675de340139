"""torchvision's ResNet layout (also timm's ResNets and facebookresearch's DETR backbone) ->
sightkit's :class:`~sightkit.models.backbones.ResNetBackbone` body.

torchvision names the stem ``conv1``/``bn1`` at the top level; sightkit's backbone keeps the
stages in one ``body`` sequence, the stem as ``stem.0`` (convolution) and ``stem.1``
(BatchNorm). The residual stages keep their names; the classifier (``fc``) has no place.

transformers' own ResNet (``ResNetModel``, the backbone of ``facebook/detr-resnet-50@no_timm``)
computes the same network under other names (``embedder.embedder.convolution``,
``encoder.stages.S.layers.I.layer.J.convolution``, ``shortcut``); :func:`from_transformers`
renames it into torchvision's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

FAMILY = "torchvision-resnet"

#: (blocks per stage, bottleneck blocks) -> torchvision model name.
_DEPTHS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
}


def recognise(state: Mapping[str, Tensor]) -> bool:
    """A torchvision/timm ResNet: a ``conv1``/``bn1`` stem and ``layer1``, and none of
    insightface's IResNet parts (``prelu``, the ``features`` embedding BatchNorm)."""
    return (
        "conv1.weight" in state
        and "bn1.running_mean" in state
        and "layer1.0.conv1.weight" in state
        and "prelu.weight" not in state
        and "features.running_mean" not in state
    )


def resnet_name(state: Mapping[str, Tensor]) -> str:
    """The torchvision ResNet whose layout ``state`` has (``conv1.*``, ``layer1.0.*`` keys, no prefix).

    Raises:
        ValueError: block counts of no supported ResNet (18, 34, 50, 101).
    """
    blocks = tuple(len({m[1] for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}) for stage in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    name = _DEPTHS.get((blocks, bottleneck))
    if name is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ValueError(
            f"a ResNet with {blocks} {kind} blocks per stage is none of {', '.join(sorted(set(_DEPTHS.values())))}"
        )
    return name


def to_body(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ResNet keys (``conv1.weight``, ``bn1.*``, ``layer2.0.conv1.weight``, ``fc.*``)
    -> the keys of a backbone's ``body`` (``stem.0.weight``, ``stem.1.*``, ``layer2.0.conv1.weight``);
    the classifier is dropped."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if key.startswith("conv1."):
            key = "stem.0." + key.removeprefix("conv1.")
        elif key.startswith("bn1."):
            key = "stem.1." + key.removeprefix("bn1.")
        out[key] = value
    return out


def is_transformers_resnet(state: Mapping[str, Tensor]) -> bool:
    return "embedder.embedder.convolution.weight" in state


def from_transformers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers' ``ResNetModel`` names -> torchvision's (``encoder.stages.1.layers.0.layer.2.normalization``
    -> ``layer2.0.bn3``; ``shortcut.convolution`` -> ``downsample.0``)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = re.sub(r"^embedder\.embedder\.convolution\.", "conv1.", key)
        key = re.sub(r"^embedder\.embedder\.normalization\.", "bn1.", key)
        key = re.sub(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.", key)
        key = re.sub(r"\.layer\.(\d+)\.convolution\.", lambda m: f".conv{int(m[1]) + 1}.", key)
        key = re.sub(r"\.layer\.(\d+)\.normalization\.", lambda m: f".bn{int(m[1]) + 1}.", key)
        key = key.replace(".shortcut.convolution.", ".downsample.0.").replace(
            ".shortcut.normalization.", ".downsample.1."
        )
        out[key] = value
    return out


def to_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Any published ResNet state dict under torchvision's names: torchvision's and timm's as
    they are; transformers' ``ResNetModel`` or ``ResNetForImageClassification`` (``resnet.``
    prefix, ``classifier`` head, e.g. ``microsoft/resnet-50``) renamed, its classifier dropped."""
    if any(k.startswith("resnet.embedder.") for k in state):
        state = {k.removeprefix("resnet."): v for k, v in state.items() if k.startswith("resnet.")}
    return from_transformers(state) if is_transformers_resnet(state) else dict(state)
