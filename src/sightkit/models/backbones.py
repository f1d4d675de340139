"""Convolutional backbones that turn images into one feature map for a detector head.

torchvision's ResNet-18/34/50/101, cut after any of its four stages, or, with the optional
``timm`` extra, any timm model that supports ``features_only``. Weights start random
(``weights=None``); :func:`sightkit.weights.load_backbone_weights` loads ImageNet weights
(``"torchvision:resnet50"``, a torchvision or timm state-dict file) into any of them.

Normalisation (``norm``):

- ``"frozen_bn"`` (DETR's choice): the BatchNorm statistics and affine parameters are fixed
  buffers, because detection batches are too small to estimate them. Meant for pretrained
  weights: from a random start frozen BN is the identity and the network has no
  normalisation at all (a from-scratch ResNet-18 cut at layer3 grows its activations from
  about 4e2 to 7e3 in 200 steps, and diverges at a learning rate of 5e-4).
- ``"bn"``: ordinary BatchNorm that learns; the choice for training from scratch (He et al.,
  "Rethinking ImageNet Pre-training", ICCV 2019: from-scratch detectors need normalisation
  that trains). Use synchronised BatchNorm across processes (the engine's ``sync_bn``) when
  the per-process batch is small.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from sightkit._api import export

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
NORMS = ("frozen_bn", "bn")
_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
TIMM_PREFIX = "timm/"


class ResNetBackbone(nn.Module):
    """A torchvision ResNet from the stem to ``layer{last_stage}``, with frozen or ordinary
    BatchNorm (module docstring).

    Attributes:
        num_channels: channels of the output feature map.
        stride: how many input pixels one output cell spans.
    """

    def __init__(
        self, name: str = "resnet50", last_stage: int = 4, trainable_stages: int = 3, norm: str = "frozen_bn"
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if name not in RESNETS:
            raise ValueError(f"name must be one of {RESNETS}, got {name!r}")
        if last_stage not in (1, 2, 3, 4):
            raise ValueError(f"last_stage must be 1, 2, 3 or 4, got {last_stage}")
        if not 0 <= trainable_stages <= last_stage + 1:
            raise ValueError(
                f"trainable_stages must be in [0, {last_stage + 1}] (the stem and {last_stage} stages), "
                f"got {trainable_stages}"
            )
        if norm == "bn" and trainable_stages != last_stage + 1:
            raise ValueError(
                f"norm='bn' updates its statistics in every stage, so all {last_stage + 1} stages must train "
                f"(trainable_stages={last_stage + 1}), got trainable_stages={trainable_stages}; "
                "freeze stages with norm='frozen_bn'"
            )
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
        stages = {
            "stem": nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool),
            **{f"layer{i}": getattr(resnet, f"layer{i}") for i in range(1, last_stage + 1)},
        }
        self.body = nn.Sequential(OrderedDict(stages))
        # As torchvision's detection backbones do, the last `trainable_stages` stages train and
        # the earlier ones stay fixed (DETR trains layer2-layer4 of a pretrained ResNet-50).
        for stage_name in _STAGES[: last_stage + 1 - trainable_stages]:
            stages[stage_name].requires_grad_(False)
        expansion = type(stages[f"layer{last_stage}"][-1]).expansion  # 1 for ResNet-18/34, 4 for ResNet-50/101
        self.num_channels: int = 64 * 2 ** (last_stage - 1) * expansion
        self.stride: int = 2 ** (last_stage + 1)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, num_channels, ceil(H / stride), ceil(W / stride)]``
        (channels-last in memory)."""
        # oneDNN's CPU convolutions and max pooling run faster on channels-last activations
        # (a ResNet-50 train step at 384 x 384: 8% less time); the weights stay contiguous,
        # as safetensors requires.
        return self.body(images.contiguous(memory_format=torch.channels_last))


class TimmBackbone(nn.Module):
    """The last feature map of a timm model (``features_only``), BatchNorm frozen.

    Needs the ``timm`` extra (``pip install 'sightkit[timm]'``).
    """

    def __init__(self, name: str, trainable: bool = True) -> None:
        super().__init__()
        try:
            import timm
            from timm.layers import freeze_batch_norm_2d
        except ImportError as error:
            raise ImportError(
                f"backbone {TIMM_PREFIX}{name} needs timm; install it with pip install 'sightkit[timm]'"
            ) from error
        model = timm.create_model(name, pretrained=False, features_only=True, out_indices=(-1,))
        self.body = freeze_batch_norm_2d(model)
        self.body.requires_grad_(trainable)
        self.num_channels: int = model.feature_info.channels()[-1]
        self.stride: int = model.feature_info.reduction()[-1]

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, num_channels, H / stride, W / stride]``."""
        return self.body(images)[-1]


@export("models.build_backbone")
def build_backbone(
    name: str = "resnet50", last_stage: int = 4, trainable_stages: int = 3, norm: str = "frozen_bn"
) -> nn.Module:
    """Build a backbone by name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` (torchvision)
    or ``"timm/<model name>"`` (needs timm; ``last_stage`` does not apply, and the whole
    model trains unless ``trainable_stages`` is 0).

    Args:
        name: the backbone.
        last_stage: the ResNet stage (1-4) whose output is returned; stage ``k`` has stride
            ``2^(k+1)``.
        trainable_stages: how many of the last stages (counting the stem as one) train.
        norm: ``"frozen_bn"`` or ``"bn"`` (module docstring); ``"bn"`` needs every stage to
            train, since its statistics would change anyway.

    Returns:
        A module mapping ``[B, 3, H, W]`` images to ``[B, C, h, w]`` features, with integer
        attributes ``num_channels`` (``C``) and ``stride``.
    """
    if name.startswith(TIMM_PREFIX):
        return TimmBackbone(name.removeprefix(TIMM_PREFIX), trainable=trainable_stages > 0)
    if name not in RESNETS:
        raise ValueError(f"backbone name must be one of {RESNETS} or '{TIMM_PREFIX}<timm model name>', got {name!r}")
    return ResNetBackbone(name, last_stage, trainable_stages, norm)


@export("models.MultiScaleBackbone")
class MultiScaleBackbone(nn.Module):
    """The feature maps of several stages of a :class:`ResNetBackbone`, for multi-scale
    detectors (Deformable DETR and DINO read layer2-4, strides 8, 16 and 32).

    The stages run once; the module shares the ResNet's ``body``, so parameter names (and the
    ``backbone.`` learning-rate prefix of a detector holding it as ``backbone``) are unchanged.

    Args:
        backbone: a ResNet from :func:`build_backbone`, cut at or after the last wanted stage.
        stages: the ResNet stages (1-4) to return, increasing.

    Attributes:
        channels: channels of each returned map.
        strides: stride of each returned map (``2^(stage+1)``).
    """

    def __init__(self, backbone: nn.Module, stages: tuple[int, ...] = (2, 3, 4)) -> None:
        super().__init__()
        if not isinstance(backbone, ResNetBackbone):
            raise TypeError(
                f"backbone must be a ResNetBackbone from build_backbone('resnet18' | ... | 'resnet101'), "
                f"got {type(backbone).__name__}"
            )
        available = len(backbone.body) - 1
        if not stages or list(stages) != sorted(set(stages)) or not 1 <= stages[0] <= stages[-1] <= available:
            raise ValueError(
                f"stages must be increasing ResNet stages in [1, {available}] (the backbone's last stage), got {stages}"
            )
        self.body = backbone.body
        self.stages = tuple(stages)
        expansion = type(backbone.body[-1][-1]).expansion
        self.channels: list[int] = [64 * 2 ** (stage - 1) * expansion for stage in self.stages]
        self.strides: list[int] = [2 ** (stage + 1) for stage in self.stages]

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> one ``[B, channels[i], ceil(H / strides[i]), ceil(W / strides[i])]`` map per
        stage (channels-last in memory)."""
        features = []
        # channels-last activations, as ResNetBackbone runs them: dino_r18_tiny at 128 x 128 pixels,
        # batch 8, in float32 took 14-20% less time for inference and 2-7% less for a training step
        # (forward and backward) at 1-2 threads than on contiguous ones (the stem's max pooling alone
        # is 10x slower on contiguous activations)
        x = images.contiguous(memory_format=torch.channels_last)
        for index, stage in enumerate(self.body.children()):  # index 0 is the stem, k is layer k
            x = stage(x)
            if index in self.stages:
                features.append(x)
            if index == self.stages[-1]:
                break
        return features
