"""ImageNet weights for the ResNet backbone of any sightkit model, the start of the papers' recipes.

DETR, DINO, VarifocalNet, RLE and SimpleBaseline all train from torchvision's original
ImageNet ResNet-50 (``IMAGENET1K_V1``, the ``pretrained=True`` weights of their time); the
registered papers' presets default to it (:data:`BACKBONE_WEIGHTS`), the ``*_tiny`` presets
to none (they are sized to learn from scratch).
"""

from __future__ import annotations

import re

from torch import nn

from sightkit.weights import resnet
from sightkit.weights.layout import fit_state_dict
from sightkit.weights.sources import fetch

#: The ImageNet weights each paper's preset starts from; models not listed start from scratch.
IMAGENET_RESNET50 = "torchvision:resnet50.IMAGENET1K_V1"
BACKBONE_WEIGHTS: dict[str, str] = {
    name: IMAGENET_RESNET50
    for name in (
        "detr_r50",
        "dino_r50",
        "vfnet_r50",
        "rle_r50",
        "regress_r50",
        "heatmap_r50",
        "fcn_r50",
        "unet_r50",
    )
}
#: The values of ``backbone_weights=`` that mean "train from scratch".
NONE_VALUES = ("", "none", "None", "null")


def default_backbone_weights(model: str) -> str:
    """The ImageNet source that the preset ``model`` starts from (``""``: from scratch)."""
    return BACKBONE_WEIGHTS.get(model, "")


def _resnet_bodies(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every distinct ResNet ``body`` (a sequence ``stem, layer1, ...``) inside ``model``."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Sequential) and list(dict(module.named_children()))[:2] == ["stem", "layer1"]
    ]


def load_backbone_weights(model: nn.Module, source: str) -> dict[str, int | str]:
    """Load ImageNet ResNet weights into the ResNet backbone of ``model``, in place.

    The backbone may be cut before layer4 (the unused stages' weights are skipped) and may use
    frozen or ordinary BatchNorm (statistics and affine parameters load into either).

    Args:
        model: any sightkit model with a :func:`~sightkit.models.build_backbone` ResNet.
        source: a ResNet in torchvision's, timm's or transformers' layout:
            ``torchvision:resnet50.IMAGENET1K_V1``, ``timm:resnet50.a1_in1k``,
            ``hf:timm/resnet50.a1_in1k``, ``hf:microsoft/resnet-50``, a local
            ``.pth``/``.safetensors`` file or ``save_pretrained`` folder; ``""``/``"none"`` loads nothing.

    Returns:
        ``{"source": source, "loaded": weights and statistics loaded, "body": the backbone's module name}``
        (``loaded`` 0 for ``"none"``).

    Raises:
        ValueError: ``model`` has no ResNet backbone, the source is not a ResNet state dict, or
            its depth differs from the backbone's (missing, unexpected, mis-shaped keys listed).
    """
    if source in NONE_VALUES:
        return {"source": "none", "loaded": 0, "body": ""}
    bodies = _resnet_bodies(model)
    if not bodies:
        raise ValueError(
            f"backbone_weights={source!r}: {type(model).__name__} has no torchvision ResNet backbone to load them into"
        )
    state = resnet.to_torchvision(fetch(source).state)
    if not resnet.recognise(state):
        sample = ", ".join(list(state)[:4])
        raise ValueError(
            f"backbone_weights={source!r} is not a torchvision, timm or transformers ResNet state dict "
            f"(its keys: {sample}, ...)"
        )
    body_state = resnet.to_body(state)
    loaded = 0
    for _, body in bodies:
        # A backbone cut after layer k has no place for the later stages' weights.
        stages = set(dict(body.named_children()))
        kept = {k: v for k, v in body_state.items() if k.split(".")[0] in stages}
        skipped = sorted({k.split(".")[0] for k in body_state} - stages)
        if any(not re.fullmatch(r"layer\d", stage) for stage in skipped):
            raise ValueError(f"backbone_weights={source!r} has parts the backbone lacks: {skipped}")
        body.load_state_dict(fit_state_dict(body, kept, f"backbone_weights={source!r}"))
        loaded += sum(not k.endswith("num_batches_tracked") for k in kept)
    return {"source": source, "loaded": loaded, "body": bodies[0][0]}
