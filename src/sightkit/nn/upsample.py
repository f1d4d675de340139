"""One upsampling block with every common way of getting resolution back behind ``mode``.

Convolution and pooling reduce resolution; decoders (FPN top-down path, heatmap heads,
segmentation) must recover it. The choices trade cost, parameters, checkerboard artefacts
and sharpness:

=============  ==========  ===============================================================
mode           parameters  what it does
=============  ==========  ===============================================================
nearest        0 (+1x1)    copies each value to an ``r x r`` block
bilinear       0 (+1x1)    linear interpolation, ``align_corners=False``
bicubic        0 (+1x1)    cubic interpolation (Keys, a = -0.75), ``align_corners=False``
pixelshuffle   conv        ``k x k`` conv to ``C_out * r^2`` channels, then PixelShuffle
                           (Shi et al., "Real-Time Single Image and Video Super-Resolution
                           Using an Efficient Sub-Pixel CNN", CVPR 2016), ICNR initialised
                           (Aitken et al., "Checkerboard artifact free sub-pixel
                           convolution", 2017) so that it starts as nearest upsampling
deconv         ConvT       transposed convolution (kernel ``2r - r mod 2``, stride ``r``)
                           initialised to bilinear interpolation (Long et al., "Fully
                           Convolutional Networks for Semantic Segmentation", CVPR 2015)
unpool         0 (+1x1)    max-unpooling to the positions a matching max-pool recorded
                           (Badrinarayanan et al., "SegNet", TPAMI 2017)
carafe         predictor   content-aware reassembly of features (Wang et al., "CARAFE",
                           ICCV 2019): each output pixel is a predicted, softmax-normalised
                           ``k_up x k_up`` weighting of its source neighbourhood
=============  ==========  ===============================================================

``(+1x1)``: when ``out_channels`` differs from ``in_channels``, a 1x1 convolution projects
the channels; the parameter-free modes apply it at the input resolution, where it is
``r^2`` times cheaper and gives the same result (interpolation and unpooling act on each
channel alone and their weights sum to one).

Unpooling needs the indices of a max-pool with ``kernel_size = stride = scale_factor``::

    pooled, indices = F.max_pool2d(features, 2, 2, return_indices=True)
    ...  # pooled -> decoder features of the same shape
    up = Upsample(channels, mode="unpool")(decoded, indices=indices, output_size=features.shape[-2:])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export

INTERPOLATION_MODES = ("nearest", "bilinear", "bicubic")
#: Every mode of :class:`Upsample`; :func:`upsample` takes the parameter-free ones.
UPSAMPLE_MODES = (*INTERPOLATION_MODES, "pixelshuffle", "deconv", "unpool", "carafe")
FUNCTIONAL_MODES = (*INTERPOLATION_MODES, "unpool")
# The initialisation each learned mode starts from unless told otherwise ("default" is PyTorch's).
_INITS = {"pixelshuffle": ("icnr", "default"), "deconv": ("bilinear", "default")}


def _check_input(x: Tensor, channels: int | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor of shape [B, C, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must be a tensor of shape [B, C, H, W], got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"x must have in_channels={channels} channels, got shape {tuple(x.shape)}")


def _check_scale_factor(scale_factor: int) -> None:
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, int) or scale_factor < 1:
        raise ValueError(f"scale_factor must be a positive integer, got {scale_factor!r}")


def _unpool(x: Tensor, scale_factor: int, indices: Tensor | None, output_size: Sequence[int] | None) -> Tensor:
    if indices is None:
        raise ValueError(
            "mode 'unpool' needs indices: pass the indices of "
            f"F.max_pool2d(..., kernel_size={scale_factor}, stride={scale_factor}, return_indices=True)"
        )
    if indices.shape != x.shape:
        raise ValueError(
            f"indices must have the shape of x {tuple(x.shape)} (one max position per value), "
            f"got {tuple(indices.shape)}"
        )
    size = None if output_size is None else tuple(output_size)[-2:]
    return F.max_unpool2d(x, indices, scale_factor, scale_factor, output_size=size)


@export("nn.upsample")
def upsample(
    x: Tensor,
    scale_factor: int = 2,
    mode: str = "nearest",
    indices: Tensor | None = None,
    output_size: Sequence[int] | None = None,
) -> Tensor:
    """Upsample ``x`` by an integer factor with a parameter-free mode.

    Args:
        x: ``[B, C, H, W]``.
        scale_factor: ``r``, the integer factor on each side.
        mode: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` (``align_corners=False``, the
            convention in which pixel ``i`` covers ``[i, i + 1)``) or ``"unpool"``.
        indices: ``"unpool"`` only: ``[B, C, H, W]`` flat indices into each
            ``rH x rW`` plane, as returned by
            ``F.max_pool2d(..., kernel_size=r, stride=r, return_indices=True)``.
        output_size: ``"unpool"`` only: ``(H_out, W_out)`` of the pooled input, when
            pooling dropped a last odd row or column; default ``(rH, rW)``.

    Returns:
        ``[B, C, rH, rW]`` (``output_size`` for unpool when given). Unpooling puts each
        value at its recorded position and zeros elsewhere.
    """
    _check_input(x)
    _check_scale_factor(scale_factor)
    if mode not in FUNCTIONAL_MODES:
        learned = "; learned modes need the module sightkit.nn.Upsample" if mode in UPSAMPLE_MODES else ""
        raise ValueError(f"mode must be one of {FUNCTIONAL_MODES}, got {mode!r}{learned}")
    if mode == "unpool":
        return _unpool(x, scale_factor, indices, output_size)
    if indices is not None or output_size is not None:
        raise ValueError(f"indices and output_size apply to mode 'unpool' only, got mode {mode!r}")
    if mode == "nearest":
        return F.interpolate(x, scale_factor=scale_factor, mode="nearest")
    return F.interpolate(x, scale_factor=scale_factor, mode=mode, align_corners=False)


def bilinear_kernel(scale_factor: int) -> Tensor:
    """The ``[k, k]`` transposed-convolution kernel (``k = 2r - r mod 2``) that performs
    bilinear interpolation with stride ``r`` (the FCN initialisation)."""
    size = 2 * scale_factor - scale_factor % 2
    center = (size - 1) / 2
    ramp = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / scale_factor
    return (ramp[:, None] * ramp[None, :]).to(torch.float32)


class _Deconv(nn.Module):
    """Transposed convolution on an edge-padded input.

    The one-pixel edge padding makes the bilinear initialisation equal to
    ``F.interpolate(mode="bilinear", align_corners=False)`` everywhere, borders included
    (interpolation clamps at the border, which is what replicating the edge gives); with
    zero padding the outermost ``r / 2`` rows would start darkened.
    """

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int, init: str) -> None:
        super().__init__()
        kernel = bilinear_kernel(scale_factor)
        size = kernel.shape[-1]
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, size, stride=scale_factor, padding=(size + scale_factor) // 2
        )
        if init == "bilinear":
            with torch.no_grad():
                if in_channels == out_channels:
                    mixing = torch.eye(in_channels)
                else:
                    # No identity exists between different channel counts: start as bilinear
                    # upsampling of a randomly initialised 1x1 convolution instead.
                    mixing = torch.empty(out_channels, in_channels, 1, 1)
                    nn.init.kaiming_uniform_(mixing, a=math.sqrt(5))
                    mixing = mixing[:, :, 0, 0].T
                self.conv.weight.copy_(mixing[:, :, None, None] * kernel)
                self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))


class _PixelShuffle(nn.Module):
    """``k x k`` convolution to ``C_out * r^2`` channels followed by ``nn.PixelShuffle(r)``.

    ICNR gives the ``r^2`` filters that feed one output channel's ``r x r`` block the same
    values, so the block starts constant: the layer is then nearest upsampling of a
    ``C_out``-channel convolution and has no checkerboard at initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int, kernel_size: int, init: str) -> None:
        super().__init__()
        groups = scale_factor**2
        self.conv = nn.Conv2d(in_channels, out_channels * groups, kernel_size, padding=kernel_size // 2)
        self.shuffle = nn.PixelShuffle(scale_factor)
        if init == "icnr":
            with torch.no_grad():
                # PixelShuffle sends channel c * r^2 + s to sub-position s of output channel c;
                # copying each group's first filter (PyTorch's default init) over the group is ICNR.
                weight = self.conv.weight.view(out_channels, groups, *self.conv.weight.shape[1:])
                weight.copy_(weight[:, :1].expand_as(weight).clone())
                bias = self.conv.bias.view(out_channels, groups)
                bias.copy_(bias[:, :1].expand_as(bias).clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.conv(x))


class _Carafe(nn.Module):
    """Content-Aware ReAssembly of FEatures (Wang et al., ICCV 2019).

    A kernel predictor (1x1 channel compressor, ``k_enc x k_enc`` content encoder to
    ``r^2 k_up^2`` channels) gives every output pixel a softmax-normalised ``k_up x k_up``
    kernel, applied to the neighbourhood of its source pixel (zero outside the image, as in
    the authors' implementation). PyTorch has no such op; the reassembly is written here as
    ``k_up^2`` shifted views and one ``einsum``, which also exports to ONNX (``unfold`` does
    not map to a standard ONNX op).
    """

    def __init__(
        self, channels: int, scale_factor: int, kernel_up: int, kernel_encoder: int, compressed_channels: int
    ) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.kernel_up = kernel_up
        self.compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.encoder = nn.Conv2d(
            compressed_channels, scale_factor**2 * kernel_up**2, kernel_encoder, padding=kernel_encoder // 2
        )
        # The paper's initialisation: near-zero kernel logits, so reassembly starts as a
        # uniform average over the neighbourhood.
        nn.init.normal_(self.encoder.weight, std=0.001)
        nn.init.zeros_(self.encoder.bias)

    def forward(self, x: Tensor, features: Tensor) -> Tensor:
        """``x``: ``[B, C, H, W]`` input of the predictor; ``features``: ``[B, C', H, W]`` to reassemble."""
        r, k = self.scale_factor, self.kernel_up
        batch, channels, height, width = features.shape
        # Channel n * r^2 + i * r + j holds tap n of sub-position (i, j): the layout that
        # pixel-shuffling the predictor's output gives in the authors' implementation.
        logits = self.encoder(self.compressor(x))  # [B, k^2 r^2, H, W]
        kernels = logits.view(batch, k * k, r, r, height, width).softmax(dim=1)
        padded = F.pad(features, (k // 2,) * 4)
        neighbours = torch.stack(
            [padded[:, :, dy : dy + height, dx : dx + width] for dy in range(k) for dx in range(k)], dim=2
        )  # [B, C', k^2, H, W]
        out = torch.einsum("bcnhw,bnijhw->bchiwj", neighbours, kernels)
        return out.reshape(batch, channels, height * r, width * r)


@export("nn.Upsample")
class Upsample(nn.Module):
    """Upsample ``[B, C_in, H, W]`` to ``[B, C_out, rH, rW]`` with any of :data:`UPSAMPLE_MODES`.

    The modes are described in this module's docstring; :func:`upsample` is the functional
    form of the parameter-free ones.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``; default ``C_in``. For the parameter-free modes and for
            ``carafe``, a different value adds a 1x1 projection.
        scale_factor: ``r``, the integer factor on each side.
        mode: one of ``"nearest"``, ``"bilinear"``, ``"bicubic"``, ``"pixelshuffle"``,
            ``"deconv"``, ``"unpool"``, ``"carafe"``.
        init: learned modes' initialisation. ``pixelshuffle``: ``"icnr"`` (default; starts
            as nearest upsampling of its convolution) or ``"default"`` (PyTorch's);
            ``deconv``: ``"bilinear"`` (default; starts as bilinear upsampling, of a 1x1
            convolution when ``C_out != C_in``) or ``"default"``.
        kernel_size: ``pixelshuffle``'s convolution kernel (odd; 1 as in fastai's
            ``PixelShuffle_ICNR``).
        carafe_kernel: ``carafe``'s reassembly kernel ``k_up`` (odd; paper: 5).
        carafe_encoder_kernel: ``carafe``'s content-encoder kernel ``k_enc`` (odd; paper: 3).
        carafe_channels: ``carafe``'s compressed channels (paper: 64).

    ``forward(x, indices=None, output_size=None)``: ``indices`` and ``output_size`` are for
    ``unpool`` only, as in :func:`upsample`; the indices come from
    ``F.max_pool2d(..., kernel_size=r, stride=r, return_indices=True)`` on the
    ``C_in``-channel features being restored.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        scale_factor: int = 2,
        mode: str = "nearest",
        *,
        init: str | None = None,
        kernel_size: int = 1,
        carafe_kernel: int = 5,
        carafe_encoder_kernel: int = 3,
        carafe_channels: int = 64,
    ) -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
        _check_scale_factor(scale_factor)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (
            ("kernel_size", kernel_size),
            ("carafe_kernel", carafe_kernel),
            ("carafe_encoder_kernel", carafe_encoder_kernel),
        ):
            if value < 1 or value % 2 == 0:
                raise ValueError(f"{name} must be a positive odd integer, got {value!r}")
        inits = _INITS.get(mode, ())
        if init is not None and init not in inits:
            allowed = f"one of {inits}" if inits else "None (mode has no learned initialisation)"
            raise ValueError(f"init for mode {mode!r} must be {allowed}, got {init!r}")
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels, self.scale_factor, self.mode = (
            in_channels,
            out_channels,
            scale_factor,
            mode,
        )
        self.init = init if init is not None else (inits[0] if inits else None)
        self.project: nn.Module = nn.Identity()
        self.body: nn.Module | None = None
        if mode == "pixelshuffle":
            self.body = _PixelShuffle(in_channels, out_channels, scale_factor, kernel_size, self.init)
        elif mode == "deconv":
            self.body = _Deconv(in_channels, out_channels, scale_factor, self.init)
        else:
            if out_channels != in_channels:
                self.project = nn.Conv2d(in_channels, out_channels, 1)
            if mode == "carafe":
                self.body = _Carafe(in_channels, scale_factor, carafe_kernel, carafe_encoder_kernel, carafe_channels)

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Sequence[int] | None = None) -> Tensor:
        """``[B, C_in, H, W]`` -> ``[B, C_out, rH, rW]`` (``output_size`` for unpool when given)."""
        _check_input(x, self.in_channels)
        if self.mode != "unpool" and (indices is not None or output_size is not None):
            raise ValueError(f"indices and output_size apply to mode 'unpool' only, got mode {self.mode!r}")
        if self.mode == "carafe":
            return self.body(x, self.project(x))
        if self.body is not None:
            return self.body(x)
        if self.mode == "unpool":
            # Indices are per channel of the pooled features, so project after unpooling.
            return self.project(_unpool(x, self.scale_factor, indices, output_size))
        return upsample(self.project(x), self.scale_factor, self.mode)

    def extra_repr(self) -> str:
        init = f", init={self.init!r}" if self.init else ""
        return f"{self.in_channels}, {self.out_channels}, scale_factor={self.scale_factor}, mode={self.mode!r}{init}"
