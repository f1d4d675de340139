"""Face embedders: IResNet (18/34/50/100, insightface's layout) and MobileFaceNet.

Both map an aligned face crop (:func:`sightkit.ops.align_faces`, RGB, normalised as
``(pixel / 255 - 0.5) / 0.5`` by :func:`sightkit.data.faces.normalise_face`) to a
``num_features``-d embedding; the margin-softmax classifier (:class:`sightkit.losses.PartialFC`)
and the verification code compare L2-normalised embeddings by cosine. :func:`embed_faces`
gives those, optionally averaged with the embedding of the mirrored crop (insightface's
flip test).

- IResNet (Deng et al., ArcFace, CVPR 2019; the "improved" residual unit of Duta et al.):
  a stride-1 3x3 stem, four stages of BN-conv-BN-PReLU-conv-BN blocks that each halve the
  resolution, then BN, dropout, a fully connected layer on the flattened ``7 x 7`` map and a
  BatchNorm1d whose scale is fixed at 1 ("embedding BN").
- MobileFaceNet (Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face
  Verification on Mobile Devices", 2018): inverted residual bottlenecks and a global
  depthwise convolution (GDC) instead of global pooling; ``scale=2`` is insightface's "mbf".

The ``*_tiny`` builders are narrow, shallow versions for tests and CPU experiments. Weights
start random: this project ships no pretrained faces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.models.registry import register_model


def _check_input_size(input_size: int, stride: int) -> int:
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < stride or input_size % stride:
        raise ValueError(f"input_size must be a positive multiple of {stride}, got {input_size!r}")
    return input_size // stride


class IBasicBlock(nn.Module):
    """IResNet's residual unit: ``BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN`` plus the shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


@export("models.IResNet")
class IResNet(nn.Module):
    """IResNet embedder (module docstring): ``[B, 3, S, S]`` -> ``[B, num_features]`` (not normalised).

    Args:
        layers: blocks per stage (``(2, 2, 2, 2)`` is IResNet-18, ``(3, 13, 30, 3)`` IResNet-100).
        widths: channels per stage (insightface: 64, 128, 256, 512).
        num_features: embedding size.
        dropout: dropout before the fully connected layer (insightface: 0, 0.4 on some sets).
        input_size: side ``S`` of the aligned crops, a multiple of 16 (112 for ArcFace).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 14, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        num_features: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4 or min(layers) < 1 or min(widths) < 1:
            raise ValueError(
                f"layers and widths must be 4 positive integers each, got {tuple(layers)}, {tuple(widths)}"
            )
        side = _check_input_size(input_size, 16)
        self.input_size, self.num_features = input_size, num_features
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        stages, inplanes = [], widths[0]
        for blocks, planes in zip(layers, widths, strict=True):
            stage = [IBasicBlock(inplanes, planes, stride=2)] + [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[3] * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        # insightface's initialisation: N(0, 0.1) convolutions, unit BN scales; the embedding BN
        # keeps its scale at 1 (only its shift trains), so the embedding's norm is not a free parameter.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(images)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if act:
        layers.append(nn.PReLU(out_channels))
    return nn.Sequential(*layers)


class DepthWise(nn.Module):
    """MobileFaceNet's bottleneck: 1x1 expand (PReLU), 3x3 depthwise (stride, PReLU), 1x1 linear
    projection; with ``residual`` the input is added (stride 1, same channels)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            _conv_bn(in_channels, hidden),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, out_channels, act=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x) if self.residual else self.layers(x)


@export("models.MobileFaceNet")
class MobileFaceNet(nn.Module):
    """MobileFaceNet embedder (module docstring): ``[B, 3, S, S]`` -> ``[B, num_features]``.

    Args:
        blocks: residual bottlenecks per stage (the paper: 1, 4, 6, 2).
        scale: channel multiplier (1: the paper's 64/128 channels; 2: insightface's "mbf").
        num_features: embedding size (the paper: 128; insightface: 512).
        input_size: side ``S`` of the aligned crops, a multiple of 16.
        groups: groups of the 3x3 convolution after the stem when ``blocks[0] == 1``. 64, as
            insightface builds it at every scale: depthwise at scale 1 (the paper), 2 input
            channels per group at its scale 2 ("mbf"), so that its checkpoints load.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        num_features: int = 512,
        input_size: int = 112,
        groups: int = 64,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1 or scale < 1:
            raise ValueError(f"blocks must be 4 positive integers and scale >= 1, got {tuple(blocks)}, {scale}")
        if groups < 1 or (64 * scale) % groups:
            raise ValueError(f"groups must divide the stem's {64 * scale} channels, got {groups}")
        side = _check_input_size(input_size, 16)
        self.input_size, self.num_features = input_size, num_features
        c64, c128 = 64 * scale, 128 * scale

        def residual(channels: int, count: int, hidden: int) -> list[nn.Module]:
            return [DepthWise(channels, channels, hidden, 1, residual=True) for _ in range(count)]

        first = (
            [_conv_bn(c64, c64, 3, groups=groups)] if blocks[0] == 1 else residual(c64, blocks[0], 128)
        )  # the paper's 3x3 depthwise convolution; insightface's deeper variants use residual bottlenecks
        self.layers = nn.Sequential(
            _conv_bn(3, c64, 3, stride=2),
            *first,
            DepthWise(c64, c64, 128, 2, residual=False),
            *residual(c64, blocks[1], 128),
            DepthWise(c64, c128, 256, 2, residual=False),
            *residual(c128, blocks[2], 256),
            DepthWise(c128, c128, 512, 2, residual=False),
            *residual(c128, blocks[3], 256),
            _conv_bn(c128, 512),
        )
        # GDC: a depthwise convolution over the whole final map weighs each position (the face's
        # centre matters more than its corners), where global average pooling would not.
        self.gdc = _conv_bn(512, 512, side, groups=512, act=False)
        self.gdc[0].padding = (0, 0)
        self.linear = nn.Linear(512, num_features, bias=False)
        self.features = nn.BatchNorm1d(num_features)

    def forward(self, images: Tensor) -> Tensor:
        x = self.gdc(self.layers(images))
        return self.features(self.linear(torch.flatten(x, 1)))


@export("models.embed_faces")
def embed_faces(model: nn.Module, crops: Tensor, flip: bool = True, batch: int = 256) -> Tensor:
    """L2-normalised embeddings ``[N, D]`` of aligned, normalised crops ``[N, 3, S, S]``.

    With ``flip`` the embedding of each crop and of its mirror image are added before
    normalising (insightface's flip test), which makes the result mirror-invariant and a
    little more accurate. Runs in ``batch``-sized chunks under ``torch.no_grad`` in the
    model's current mode (call ``model.eval()`` first).
    """
    if not isinstance(crops, Tensor) or crops.dim() != 4 or crops.shape[1] != 3:
        got = tuple(crops.shape) if isinstance(crops, Tensor) else type(crops).__name__
        raise ValueError(f"crops must be a tensor [N, 3, S, S] of aligned faces, got {got}")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else crops.device
    chunks = []
    with torch.no_grad():
        for start in range(0, crops.shape[0], batch):
            chunk = crops[start : start + batch].to(device)
            features = model(chunk).float()
            if flip:
                features = features + model(chunk.flip(-1)).float()
            chunks.append(F.normalize(features, dim=1))
    if not chunks:
        return crops.new_zeros(0, getattr(model, "num_features", 0))
    return torch.cat(chunks)


def _iresnet(layers: tuple[int, ...], **overrides: object) -> IResNet:
    return IResNet(layers=layers, **overrides)  # type: ignore[arg-type]


@register_model(task="face")
def iresnet18(**overrides: object) -> IResNet:
    """IResNet-18: blocks (2, 2, 2, 2), 512-d embedding, 112 x 112 crops."""
    return _iresnet((2, 2, 2, 2), **overrides)


@register_model(task="face")
def iresnet34(**overrides: object) -> IResNet:
    """IResNet-34: blocks (3, 4, 6, 3)."""
    return _iresnet((3, 4, 6, 3), **overrides)


@register_model(task="face")
def iresnet50(**overrides: object) -> IResNet:
    """IResNet-50: blocks (3, 4, 14, 3)."""
    return _iresnet((3, 4, 14, 3), **overrides)


@register_model(task="face")
def iresnet100(**overrides: object) -> IResNet:
    """IResNet-100: blocks (3, 13, 30, 3)."""
    return _iresnet((3, 13, 30, 3), **overrides)


@register_model(task="face")
def iresnet_tiny(**overrides: object) -> IResNet:
    """A narrow IResNet for tests and CPU runs: one block per stage, widths 16-128, 128-d
    embedding, 64 x 64 crops."""
    settings: dict[str, object] = {"widths": (16, 32, 64, 128), "num_features": 128, "input_size": 64}
    return _iresnet((1, 1, 1, 1), **{**settings, **overrides})


@register_model(task="face")
def mobilefacenet(**overrides: object) -> MobileFaceNet:
    """MobileFaceNet as insightface trains it ("mbf": scale 2, 512-d)."""
    return MobileFaceNet(**overrides)  # type: ignore[arg-type]


@register_model(task="face")
def mobilefacenet_tiny(**overrides: object) -> MobileFaceNet:
    """A small MobileFaceNet for tests: scale 1, blocks (1, 1, 1, 1), 128-d, 64 x 64 crops."""
    settings: dict[str, object] = {"blocks": (1, 1, 1, 1), "scale": 1, "num_features": 128, "input_size": 64}
    return MobileFaceNet(**{**settings, **overrides})  # type: ignore[arg-type]
