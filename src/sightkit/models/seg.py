"""Semantic segmentation models on the shared ResNet backbones: FCN-8s and a U-Net decoder.

Both recover resolution with :class:`sightkit.nn.Upsample`, so that every mode of the
upsampling family (``upsample=`` nearest, bilinear, bicubic, pixelshuffle, deconv, unpool,
carafe) can be compared in the same network. Each model's learned ×2 steps use the chosen
mode; the last step to the input resolution is bilinear interpolation of the class scores,
as in FCN-8s (whose final ×8 layer stays fixed at bilinear weights) and in the decoders that
stop short of full resolution (DeepLabv3+, Panoptic FPN).

``unpool`` needs max-pooling indices (SegNet). A ResNet encoder downsamples with strided
convolutions and records none, so each ×2 step takes them from the encoder features at the
resolution it restores: in every 2x2 window, the position where the mean over channels of
those features peaks (the same position for every channel being unpooled). The guide has
no parameters, so every parameter still receives a gradient (as DDP requires).

Inputs are ``[B, 3, H, W]`` normalised images with ``H`` and ``W`` multiples of 32; outputs
are ``[B, num_classes, H, W]`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.models.backbones import ResNetBackbone, build_backbone
from sightkit.models.registry import register_model
from sightkit.nn.upsample import UPSAMPLE_MODES, Upsample

#: Output stride of the encoders; input sides must be multiples of it.
STRIDE = 32


class ResNetPyramid(nn.Module):
    """The features of a torchvision ResNet at strides 2 (the stem convolution, before its
    max-pool), 4, 8, 16 and 32.

    Attributes:
        channels: the channels at each of those strides.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if not isinstance(backbone, ResNetBackbone) or len(backbone.body) != 5:
            raise ValueError(
                "segmentation models need a torchvision ResNet backbone up to layer4 "
                f"(build_backbone('resnet18' | 'resnet34' | 'resnet50')), got {type(backbone).__name__}"
            )
        self.body = backbone.body
        stages = list(self.body.children())[1:]
        expansion = type(stages[-1][-1]).expansion
        self.channels: list[int] = [64] + [64 * 2**i * expansion for i in range(4)]

    def forward(self, images: Tensor) -> list[Tensor]:
        stem = self.body.stem
        x = stem[2](stem[1](stem[0](images)))  # conv1, bn1, relu: stride 2
        features = [x]
        x = stem[3](x)  # max-pool: stride 4
        for stage in list(self.body.children())[1:]:
            x = stage(x)
            features.append(x)
        return features


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got {got}")
    if images.shape[-2] % STRIDE or images.shape[-1] % STRIDE:
        raise ValueError(
            f"images height and width must be multiples of {STRIDE} (the encoder's stride), got "
            f"{tuple(images.shape[-2:])}; pad them (sightkit.data.collate_segmentation pads to 32)"
        )


def _check_mode(upsample: str) -> None:
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")


def _unpool_indices(features: Tensor, channels: int) -> Tensor:
    """``[B, channels, H / 2, W / 2]`` indices of the peaks of ``features``' channel mean in each 2x2 window."""
    indices = F.max_pool2d(features.mean(dim=1, keepdim=True), 2, 2, return_indices=True)[1]
    return indices.expand(-1, channels, -1, -1)


@export("models.FCN")
class FCN(nn.Module):
    """FCN-8s (Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015)
    on a ResNet.

    Class scores from torchvision's ``FCNHead`` on the stride-32 features are upsampled ×2
    and added to scores of the stride-16 features, upsampled ×2 again and added to scores of
    the stride-8 features, then interpolated ×8 to the input. As in the paper, the skip
    score layers start at zero, so the untrained net is FCN-32s.

    Args:
        backbone: a ResNet from :func:`sightkit.models.build_backbone`.
        num_classes: ``K``, background included.
        upsample: the mode of the two ×2 steps (:data:`sightkit.nn.upsample.UPSAMPLE_MODES`;
            the paper's is ``"deconv"`` initialised to bilinear).
        dropout: dropout in the head.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, upsample: str = "deconv", dropout: float = 0.1) -> None:
        super().__init__()
        _check_mode(upsample)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = ResNetPyramid(backbone)
        self.num_classes = num_classes
        self.upsample_mode = upsample
        c8, c16, c32 = self.backbone.channels[2:]
        inner = c32 // 4
        self.head = nn.Sequential(
            nn.Conv2d(c32, inner, 3, padding=1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(inner, num_classes, 1),
        )
        self.score16 = nn.Conv2d(c16, num_classes, 1)
        self.score8 = nn.Conv2d(c8, num_classes, 1)
        for layer in (self.score16, self.score8):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.up16 = Upsample(num_classes, scale_factor=2, mode=upsample)
        self.up8 = Upsample(num_classes, scale_factor=2, mode=upsample)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, K, H, W]`` logits."""
        _check_images(images)
        _, _, f8, f16, f32 = self.backbone(images)
        scores = self.head(f32)
        for up, score, features in ((self.up16, self.score16, f16), (self.up8, self.score8, f8)):
            indices = _unpool_indices(features, self.num_classes) if self.upsample_mode == "unpool" else None
            scores = up(scores, indices=indices) + score(features)
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)


class _DecoderBlock(nn.Module):
    """U-Net decoder step: upsample ×2 (changing channels), concatenate the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        self.up = Upsample(in_channels, out_channels, scale_factor=2, mode=mode)
        self.in_channels = in_channels
        self.fuse = nn.Sequential(
            nn.Conv2d(out_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        indices = _unpool_indices(skip, self.in_channels) if self.up.mode == "unpool" else None
        return self.fuse(torch.cat((self.up(x, indices=indices), skip), dim=1))


@export("models.UNet")
class UNet(nn.Module):
    """A U-Net decoder (Ronneberger et al., "U-Net", MICCAI 2015) on a ResNet encoder.

    From the stride-32 features, four decoder blocks each upsample ×2 with the chosen mode,
    concatenate the encoder features of the same stride (16, 8, 4, and 2: the stem
    convolution) and apply two 3x3 conv-BN-ReLU; a 1x1 convolution gives class scores at
    stride 2, interpolated ×2 to the input.

    Args:
        backbone: a ResNet from :func:`sightkit.models.build_backbone`.
        num_classes: ``K``, background included.
        upsample: the mode of the four ×2 steps (:data:`sightkit.nn.upsample.UPSAMPLE_MODES`).
        decoder_channels: output channels of the four blocks, coarse to fine.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        upsample: str = "bilinear",
        decoder_channels: Sequence[int] = (256, 128, 64, 32),
    ) -> None:
        super().__init__()
        _check_mode(upsample)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(decoder_channels) != 4 or any(c < 1 for c in decoder_channels):
            raise ValueError(f"decoder_channels must be 4 positive numbers, got {list(decoder_channels)}")
        self.backbone = ResNetPyramid(backbone)
        self.num_classes = num_classes
        self.upsample_mode = upsample
        skips = self.backbone.channels[3::-1]  # strides 16, 8, 4, 2
        inputs = [self.backbone.channels[4], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            _DecoderBlock(i, s, o, upsample) for i, s, o in zip(inputs, skips, decoder_channels, strict=True)
        )
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, K, H, W]`` logits."""
        _check_images(images)
        features = self.backbone(images)
        x = features[-1]
        for block, skip in zip(self.blocks, features[3::-1], strict=True):
            x = block(x, skip)
        return F.interpolate(self.classifier(x), size=images.shape[-2:], mode="bilinear", align_corners=False)


def _backbone(name: str, norm: str) -> nn.Module:
    # Segmentation trains every stage: there are no pretrained weights to keep, and ordinary
    # BatchNorm ("bn") is what training from scratch needs.
    return build_backbone(name, last_stage=4, trainable_stages=5 if norm == "bn" else 4, norm=norm)


@export("models.build_fcn")
def build_fcn(
    num_classes: int = 21,
    backbone: str = "resnet50",
    backbone_norm: str = "bn",
    upsample: str = "deconv",
    dropout: float = 0.1,
) -> FCN:
    """An :class:`FCN` (FCN-8s) on a torchvision ResNet trained from scratch."""
    return FCN(_backbone(backbone, backbone_norm), num_classes, upsample, dropout)


@export("models.build_unet")
def build_unet(
    num_classes: int = 21,
    backbone: str = "resnet50",
    backbone_norm: str = "bn",
    upsample: str = "bilinear",
    decoder_channels: Sequence[int] = (256, 128, 64, 32),
) -> UNet:
    """A :class:`UNet` on a torchvision ResNet trained from scratch."""
    return UNet(_backbone(backbone, backbone_norm), num_classes, upsample, tuple(decoder_channels))


@register_model(task="segment")
def fcn_r50(**overrides: Any) -> FCN:
    """FCN-8s on ResNet-50, deconvolution ×2 steps initialised to bilinear (the paper's)."""
    return build_fcn(**overrides)


@register_model(task="segment")
def fcn_r18_tiny(**overrides: Any) -> FCN:
    """FCN-8s on ResNet-18, for CPU runs and tests."""
    return build_fcn(**{"backbone": "resnet18", **overrides})


@register_model(task="segment")
def unet_r50(**overrides: Any) -> UNet:
    """U-Net decoder (256, 128, 64, 32 channels) on ResNet-50."""
    return build_unet(**overrides)


@register_model(task="segment")
def unet_r18_tiny(**overrides: Any) -> UNet:
    """U-Net decoder (64, 32, 16, 16 channels) on ResNet-18, for CPU runs and tests."""
    return build_unet(**{"backbone": "resnet18", "decoder_channels": (64, 32, 16, 16), **overrides})
