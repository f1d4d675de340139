"""Top-down human pose models: RLE regression, plain regression and the SimpleBaseline heatmap model.

Each takes a person crop ``[B, 3, H, W]`` (256x192 in the papers) and predicts its ``K``
keypoints; :func:`pose_postprocess` turns any of their outputs into keypoints in crop pixels
and per-keypoint scores, with the flip test.

- :class:`RLEPose` (Li et al., "Human Pose Regression with Residual Log-likelihood
  Estimation", ICCV 2021): backbone, global average pooling, then per keypoint a location
  ``mu`` (the official "normalised" linear layer) and a scale ``sigma`` (sigmoid), plus the
  :class:`~sightkit.nn.RealNVP` flow that :func:`sightkit.losses.rle_loss` trains with them.
  The flow is part of the model so that it trains, is checkpointed and (under DDP) is
  synchronised with it; inference does not use it. Score: ``1 - mean(sigma)``.
- :class:`RegressionPose`: the same network without ``sigma`` and flow, trained with L1:
  the "plain regression" baseline the RLE paper improves on.
- :class:`HeatmapPose` (Xiao et al., "Simple Baselines for Human Pose Estimation and
  Tracking", ECCV 2018): backbone, three upsampling stages (``sightkit.nn.Upsample``,
  deconvolution by default; each followed by BatchNorm and ReLU, parameter-free modes by a
  3x3 convolution as in resize-convolution) and a 1x1 convolution to ``K`` heatmaps.

Regression coordinates are normalised to the crop, as in the official RLE code:
``(x / W - 0.5, y / H - 0.5)``, so that one model serves any input size.

Registered models (``create_model(name, **overrides)``), ResNets with ordinary BatchNorm as
this project trains from scratch (see :mod:`sightkit.models.backbones`):

=================  ===========================  ======  ==================================
name               backbone                     stride  head
=================  ===========================  ======  ==================================
rle_r50            ResNet-50                    32      RLE (pooled 2048 -> K x (mu, sigma))
regress_r50        ResNet-50                    32      L1 regression
heatmap_r50        ResNet-50                    4       3 x (deconv 256, BN, ReLU), 1x1 conv
rle_r18_tiny       ResNet-18 to layer3          16      RLE (pooled 256)
regress_r18_tiny   ResNet-18 to layer3          16      L1 regression
heatmap_r18_tiny   ResNet-18 to layer3          2       3 x (deconv 64, BN, ReLU), 1x1 conv
=================  ===========================  ======  ==================================
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sightkit._api import export
from sightkit.models.backbones import build_backbone
from sightkit.models.registry import register_model
from sightkit.nn.flows import RealNVP
from sightkit.nn.upsample import INTERPOLATION_MODES, UPSAMPLE_MODES, Upsample
from sightkit.ops.keypoints import DECODE_METHODS, decode_heatmaps, flip_heatmaps, flip_keypoints

POSE_KINDS = ("rle", "regress", "heatmap")


class NormalizedLinear(nn.Module):
    """``y = W x / |x| + b``: the official RLE coordinate layer. Dividing by the feature norm
    makes the prediction independent of the feature scale; the weights start tiny (Xavier,
    gain 0.01), so every keypoint starts at the crop's centre (``b = 0``)."""

    def __init__(self, in_features: int, out_features: int, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        self.linear = nn.Linear(in_features, out_features)
        nn.init.xavier_uniform_(self.linear.weight, gain=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.linear.weight.T
        if self.normalize:
            y = y / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return y + self.linear.bias


@export("models.RegressionPose")
class RegressionPose(nn.Module):
    """Backbone, global average pooling and a linear layer to ``K`` normalised locations.

    Args:
        backbone: ``[B, 3, H, W]`` -> ``[B, C, h, w]`` with an integer ``num_channels``.
        num_keypoints: ``K``.

    ``forward(images)`` returns ``{"coords": [B, K, 2]}``, crop-normalised (module docstring).
    """

    kind = "regress"

    def __init__(self, backbone: nn.Module, num_keypoints: int = 17) -> None:
        super().__init__()
        if num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
        self.backbone = backbone
        self.num_keypoints = num_keypoints
        self.coords = NormalizedLinear(backbone.num_channels, num_keypoints * 2)

    def pooled(self, images: Tensor) -> Tensor:
        return self.backbone(images).mean((-2, -1))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"coords": self.coords(self.pooled(images)).unflatten(-1, (self.num_keypoints, 2))}


@export("models.RLEPose")
class RLEPose(RegressionPose):
    """:class:`RegressionPose` plus a per-coordinate scale ``sigma`` and the residual flow.

    ``forward(images)`` returns ``{"coords": [B, K, 2], "sigma": [B, K, 2]}`` with ``sigma``
    in ``(0, 1)`` (a sigmoid, in crop-normalised units); ``self.flow`` is the
    :class:`~sightkit.nn.RealNVP` that :func:`sightkit.losses.rle_loss` needs.
    """

    kind = "rle"

    def __init__(self, backbone: nn.Module, num_keypoints: int = 17) -> None:
        super().__init__(backbone, num_keypoints)
        self.sigma = NormalizedLinear(backbone.num_channels, num_keypoints * 2, normalize=False)
        self.flow = RealNVP(dim=2)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.pooled(images)
        shape = (self.num_keypoints, 2)
        return {
            "coords": self.coords(features).unflatten(-1, shape),
            "sigma": torch.sigmoid(self.sigma(features)).unflatten(-1, shape),
        }


class _UpsampleStage(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, mode: str) -> None:
        layers: list[nn.Module] = [Upsample(in_channels, out_channels, 2, mode)]
        if mode in INTERPOLATION_MODES:
            # Interpolation has no spatial filter of its own (its channel change is a 1x1
            # convolution): a 3x3 convolution after it gives the stage the receptive field a
            # 4x4 deconvolution has (resize-convolution, Odena et al., Distill 2016).
            layers.append(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False))
        layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


@export("models.HeatmapPose")
class HeatmapPose(nn.Module):
    """SimpleBaseline: backbone, ``stages`` upsampling stages and a 1x1 convolution to ``K`` heatmaps.

    Args:
        backbone: ``[B, 3, H, W]`` -> ``[B, C, h, w]`` with integer ``num_channels`` and ``stride``.
        num_keypoints: ``K``.
        channels: width of every upsampling stage (SimpleBaseline: 256).
        upsample: a mode of :class:`sightkit.nn.Upsample` (``"deconv"`` as in the paper, or
            ``"nearest"``, ``"bilinear"``, ``"bicubic"``, ``"pixelshuffle"``, ``"carafe"``;
            ``"unpool"`` needs pooling indices that a backbone does not give).
        stages: upsampling stages, each x2 (SimpleBaseline: 3).

    ``forward(images)`` returns ``{"heatmaps": [B, K, H / stride, W / stride]}``;
    ``self.stride`` is the backbone's stride divided by ``2^stages``.
    """

    kind = "heatmap"

    def __init__(
        self,
        backbone: nn.Module,
        num_keypoints: int = 17,
        channels: int = 256,
        upsample: str = "deconv",
        stages: int = 3,
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES or upsample == "unpool":
            modes = tuple(m for m in UPSAMPLE_MODES if m != "unpool")
            raise ValueError(f"upsample must be one of {modes}, got {upsample!r}")
        if num_keypoints < 1 or channels < 1 or stages < 0:
            raise ValueError(
                f"need num_keypoints >= 1, channels >= 1 and stages >= 0, got {num_keypoints}, {channels}, {stages}"
            )
        if backbone.stride % 2**stages:
            raise ValueError(f"{stages} x2 stages do not divide the backbone's stride {backbone.stride}")
        self.backbone = backbone
        self.num_keypoints = num_keypoints
        self.stride = backbone.stride // 2**stages
        widths = [backbone.num_channels] + [channels] * stages
        self.upsample = nn.Sequential(*(_UpsampleStage(a, b, upsample) for a, b in itertools.pairwise(widths)))
        self.final = nn.Conv2d(widths[-1], num_keypoints, 1)
        # SimpleBaseline's initialisation of the output layer: the heatmaps start flat at 0.
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"heatmaps": self.final(self.upsample(self.backbone(images)))}


@export("models.pose_postprocess")
def pose_postprocess(
    outputs: dict[str, Tensor],
    input_size: Sequence[int],
    flipped: dict[str, Tensor] | None = None,
    flip_pairs: Sequence[tuple[int, int]] = (),
    decode: str = "taylor",
) -> tuple[Tensor, Tensor]:
    """Keypoints in crop pixels and their scores from any pose model's outputs.

    Args:
        outputs: a pose model's outputs on the crops: ``{"heatmaps"}``, ``{"coords"}`` or
            ``{"coords", "sigma"}``.
        input_size: ``(H, W)`` of the crops.
        flipped: the outputs on the horizontally flipped crops (the flip test); they are
            flipped back (``flip_pairs`` swapped) and averaged with ``outputs``: heatmaps
            before decoding, coordinates and ``sigma`` after.
        flip_pairs: left/right keypoint index pairs.
        decode: heatmap decoding, see :func:`sightkit.ops.decode_heatmaps`.

    Returns:
        ``points`` ``[B, K, 2]`` (crop pixels, continuous coordinates) and ``scores``
        ``[B, K]``: the heatmap maximum, ``1 - mean(sigma)`` for RLE, 1 for plain regression.
    """
    if decode not in DECODE_METHODS:
        raise ValueError(f"decode must be one of {DECODE_METHODS}, got {decode!r}")
    height, width = input_size
    if "heatmaps" in outputs:
        heatmaps = outputs["heatmaps"].float()
        if flipped is not None:
            heatmaps = (heatmaps + flip_heatmaps(flipped["heatmaps"].float(), flip_pairs)) / 2
        cells, scores = decode_heatmaps(heatmaps, decode)
        scale = cells.new_tensor([width / heatmaps.shape[-1], height / heatmaps.shape[-2]])
        return cells * scale, scores
    if "coords" not in outputs:
        raise ValueError(f"outputs must hold 'heatmaps' or 'coords', got keys {sorted(outputs)}")
    coords = outputs["coords"].float()
    sigma = outputs["sigma"].float() if "sigma" in outputs else None
    if flipped is not None:
        coords = (coords + flip_keypoints(flipped["coords"].float(), 0.0, flip_pairs)) / 2
        if sigma is not None:
            # flip_keypoints swaps the slots and negates x; a scale has no sign, so abs() undoes the latter.
            sigma = (sigma + flip_keypoints(flipped["sigma"].float(), 0.0, flip_pairs).abs()) / 2
    points = (coords + 0.5) * coords.new_tensor([width, height])
    scores = 1 - sigma.mean(-1) if sigma is not None else torch.ones_like(points[..., 0])
    return points, scores


@export("models.build_pose")
def build_pose(
    kind: str = "rle",
    num_keypoints: int = 17,
    backbone: str = "resnet50",
    last_stage: int = 4,
    backbone_norm: str = "bn",
    channels: int = 256,
    upsample: str = "deconv",
    stages: int = 3,
) -> nn.Module:
    """A top-down pose model: ``kind`` ``"rle"`` (:class:`RLEPose`), ``"regress"``
    (:class:`RegressionPose`) or ``"heatmap"`` (:class:`HeatmapPose`, which alone uses
    ``channels``, ``upsample`` and ``stages``) on a :func:`build_backbone` backbone whose
    every stage trains."""
    if kind not in POSE_KINDS:
        raise ValueError(f"kind must be one of {POSE_KINDS}, got {kind!r}")
    net = build_backbone(backbone, last_stage, trainable_stages=last_stage + 1, norm=backbone_norm)
    if kind == "heatmap":
        return HeatmapPose(net, num_keypoints, channels, upsample, stages)
    return (RLEPose if kind == "rle" else RegressionPose)(net, num_keypoints)


_TINY: dict[str, Any] = {"backbone": "resnet18", "last_stage": 3}


@register_model(task="pose")
def rle_r50(**overrides: Any) -> nn.Module:
    """RLE on ResNet-50 (the paper's COCO model). Keyword arguments override :func:`build_pose`'s."""
    return build_pose(**{"kind": "rle", **overrides})


@register_model(task="pose")
def regress_r50(**overrides: Any) -> nn.Module:
    """Plain L1 regression on ResNet-50, RLE's baseline."""
    return build_pose(**{"kind": "regress", **overrides})


@register_model(task="pose")
def heatmap_r50(**overrides: Any) -> nn.Module:
    """SimpleBaseline on ResNet-50: three 256-channel deconvolution stages, heatmaps at stride 4."""
    return build_pose(**{"kind": "heatmap", **overrides})


@register_model(task="pose")
def rle_r18_tiny(**overrides: Any) -> nn.Module:
    """RLE on ResNet-18 cut after layer3 (256 channels, stride 16), for CPU training."""
    return build_pose(**{"kind": "rle", **_TINY, **overrides})


@register_model(task="pose")
def regress_r18_tiny(**overrides: Any) -> nn.Module:
    """Plain L1 regression on the backbone of :func:`rle_r18_tiny`."""
    return build_pose(**{"kind": "regress", **_TINY, **overrides})


@register_model(task="pose")
def heatmap_r18_tiny(**overrides: Any) -> nn.Module:
    """SimpleBaseline on the backbone of :func:`rle_r18_tiny` with 64-channel stages: heatmaps
    at stride 2 (64x48 for a 128x96 crop)."""
    return build_pose(**{"kind": "heatmap", **_TINY, "channels": 64, **overrides})
