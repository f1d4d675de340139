"""The FPN neck: level sizes and channels, the top-down sum against a hand computation with
identity convolutions, the upsampling mode reaching the top-down path, and clear errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sightkit.models import FPN


def identity_convs(fpn: FPN) -> None:
    """Make every lateral and output convolution the identity (channels in = channels out)."""
    with torch.no_grad():
        for conv in (*fpn.lateral, *fpn.output):
            conv.weight.zero_()
            centre = conv.weight.shape[-1] // 2
            for c in range(conv.out_channels):
                conv.weight[c, c, centre, centre] = 1.0
            conv.bias.zero_()


def features(sizes: list[tuple[int, int]], channels: int = 4) -> list[torch.Tensor]:
    return [torch.randn(2, channels, h, w) for h, w in sizes]


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_top_down_sums_the_upsampled_coarser_level(mode: str) -> None:
    """P5 = C5, P4 = C4 + up(P5), P3 = C3 + up(P4) with identity convolutions; an odd C4 (5x3)
    gets the doubled C5 (6x4) cropped to its size."""
    fpn = FPN([4, 4, 4], out_channels=4, extra_levels=0, upsample=mode)
    identity_convs(fpn)
    c3, c4, c5 = features([(10, 6), (5, 3), (3, 2)])

    def up(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        doubled = F.interpolate(x, scale_factor=2, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
        return doubled[..., : size[-2], : size[-1]]

    p5 = c5
    p4 = c4 + up(p5, c4.shape)
    p3 = c3 + up(p4, c3.shape)
    with torch.no_grad():
        out = fpn([c3, c4, c5])
    for got, expected in zip(out, [p3, p4, p5], strict=True):
        torch.testing.assert_close(got, expected)


def test_extra_levels_come_from_the_output_with_a_relu_between() -> None:
    """P6 = conv(P5), P7 = conv(ReLU(P6)), each a stride-2 3x3 convolution (sizes round up)."""
    fpn = FPN([3, 5, 7], out_channels=8, extra_levels=2)
    c = [torch.randn(1, 3, 13, 11), torch.randn(1, 5, 7, 6), torch.randn(1, 7, 4, 3)]
    with torch.no_grad():
        out = fpn(c)
        assert [tuple(x.shape) for x in out] == [(1, 8, 13, 11), (1, 8, 7, 6), (1, 8, 4, 3), (1, 8, 2, 2), (1, 8, 1, 1)]
        torch.testing.assert_close(out[3], fpn.extra[0](out[2]))
        torch.testing.assert_close(out[4], fpn.extra[1](F.relu(out[3])))


def test_learned_upsampling_trains_and_every_parameter_gets_a_gradient() -> None:
    fpn = FPN([4, 6, 8], out_channels=8, upsample="deconv")
    assert any(isinstance(m, nn.ConvTranspose2d) for m in fpn.upsample.modules())
    out = fpn([torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4), torch.randn(2, 8, 2, 2)])
    sum(x.square().mean() for x in out).backward()
    missing = [name for name, p in fpn.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_bad_settings_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"upsample must be one of .*'carafe'\), got 'unpool'"):
        FPN([4, 4], upsample="unpool")
    with pytest.raises(ValueError, match="in_channels must be a non-empty list"):
        FPN([])
    fpn = FPN([4, 6], out_channels=8, extra_levels=0)
    with pytest.raises(ValueError, match="features must be 2 maps"):
        fpn([torch.randn(1, 4, 4, 4)])
    with pytest.raises(ValueError, match=r"features\[1\] must have shape \[B, 6, H, W\], got \(1, 5, 2, 2\)"):
        fpn([torch.randn(1, 4, 4, 4), torch.randn(1, 5, 2, 2)])
