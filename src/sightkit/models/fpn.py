"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017)
with the two extra levels of RetinaNet and FCOS (P6 and P7 from P5's output).

From backbone features ``C3, C4, C5`` (strides 8, 16, 32) it builds ``P3 .. P7`` (strides 8
to 128), all with ``out_channels``: a 1x1 lateral convolution on each ``C``, a top-down
path that adds the upsampled coarser level, a 3x3 output convolution per level, then
``P6 = conv3x3/2(P5)`` and ``P7 = conv3x3/2(ReLU(P6))`` (the mmdetection settings
``add_extra_convs="on_output", relu_before_extra_convs=True`` that FCOS, ATSS and VarifocalNet
use). The top-down upsampling is :class:`sightkit.nn.Upsample`, nearest by default (the
paper's), and any of its modes but ``unpool`` (which needs max-pool indices no backbone here
records) can be chosen, as in the segmentation and pose heads.

torchvision's ``FeaturePyramidNetwork`` hard-codes nearest interpolation and puts P6/P7 on
the backbone's C5 by default, hence this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from sightkit._api import export
from sightkit.nn.upsample import UPSAMPLE_MODES, Upsample

#: Upsampling modes the top-down path accepts.
FPN_UPSAMPLE_MODES = tuple(mode for mode in UPSAMPLE_MODES if mode != "unpool")


@export("models.FPN")
class FPN(nn.Module):
    """Feature pyramid ``P3 .. P(2 + len(in_channels) + extra_levels)`` from backbone features.

    Args:
        in_channels: channels of the input feature maps, finest first (ResNet-50's C3-C5:
            ``(512, 1024, 2048)``).
        out_channels: channels of every output level (paper: 256).
        extra_levels: levels added above the coarsest input by stride-2 3x3 convolutions
            (2 gives P6 and P7).
        upsample: the top-down upsampling mode, one of :data:`FPN_UPSAMPLE_MODES`.

    ``forward(features)``: a sequence of ``[B, in_channels[i], H_i, W_i]``, each level half the
    size of the one before (rounded up, as strided convolutions give). Returns a list of
    ``[B, out_channels, H_i, W_i]``, the input levels followed by the extra ones (each again
    half the size, rounded up).
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int = 256, extra_levels: int = 2, upsample: str = "nearest"
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels or any(c < 1 for c in in_channels):
            raise ValueError(f"in_channels must be a non-empty list of positive channel counts, got {in_channels}")
        if out_channels < 1 or extra_levels < 0:
            raise ValueError(f"need out_channels >= 1 and extra_levels >= 0, got {out_channels} and {extra_levels}")
        if upsample not in FPN_UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {FPN_UPSAMPLE_MODES}, got {upsample!r}")
        self.in_channels, self.out_channels, self.upsample_mode = in_channels, out_channels, upsample
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.upsample = nn.ModuleList(
            Upsample(out_channels, scale_factor=2, mode=upsample) for _ in range(len(in_channels) - 1)
        )
        self.extra = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(extra_levels)
        )
        self.relu = nn.ReLU()
        # Xavier-uniform weights and zero biases: the initialisation of the mmdetection FPN that
        # VarifocalNet's reference results use. Learned upsampling keeps its own.
        for conv in (*self.lateral, *self.output, *self.extra):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.lateral):
            raise ValueError(f"features must be {len(self.lateral)} maps (finest first), got {len(features)}")
        for i, (x, channels) in enumerate(zip(features, self.in_channels, strict=True)):
            if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != channels:
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"features[{i}] must have shape [B, {channels}, H, W], got {got}")
        laterals = [conv(x) for conv, x in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            finer = laterals[i - 1]
            # Doubling an odd-sized level overshoots the finer one by a row or column; crop it.
            up = self.upsample[i - 1](laterals[i])[..., : finer.shape[-2], : finer.shape[-1]]
            laterals[i - 1] = finer + up
        outputs = [conv(x) for conv, x in zip(self.output, laterals, strict=True)]
        for i, conv in enumerate(self.extra):
            outputs.append(conv(outputs[-1] if i == 0 else self.relu(outputs[-1])))
        return outputs

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, upsample={self.upsample_mode!r}"
