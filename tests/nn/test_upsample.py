"""The upsampling family: sizes for every mode, each initialisation against the operation it
must start as (bilinear deconv, ICNR pixel shuffle), unpooling against hand positions,
CARAFE against a naive unfold-based reassembly, gradients, ONNX export and errors."""

import pytest
import torch
import torch.nn.functional as F

from sightkit.nn import Upsample, upsample
from sightkit.nn.upsample import UPSAMPLE_MODES, bilinear_kernel


def _pool_indices(shape: tuple[int, ...], scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.randn(*shape)
    return F.max_pool2d(features, scale, scale, return_indices=True)


@pytest.mark.parametrize("mode", UPSAMPLE_MODES)
@pytest.mark.parametrize("out_channels", [None, 5])
def test_every_mode_doubles_the_size_and_keeps_batch_and_channels(mode: str, out_channels: int | None) -> None:
    x = torch.randn(2, 3, 6, 7)
    module = Upsample(3, out_channels, scale_factor=2, mode=mode)
    kwargs = {}
    if mode == "unpool":
        x, kwargs["indices"] = _pool_indices((2, 3, 12, 14), 2)
    y = module(x.requires_grad_(), **kwargs)
    assert y.shape == (2, out_channels or 3, 12, 14)
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad.abs().sum() > 0
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_deconv_starts_as_bilinear_interpolation_including_borders(scale: int) -> None:
    x = torch.randn(2, 4, 5, 7)
    y = Upsample(4, scale_factor=scale, mode="deconv")(x)
    torch.testing.assert_close(y, F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False))


def test_deconv_with_other_channels_starts_as_bilinear_upsampling_of_a_1x1_conv() -> None:
    x = torch.randn(1, 3, 4, 6)
    module = Upsample(3, 5, mode="deconv")
    mixing = module.body.conv.weight[:, :, 1, 1] / bilinear_kernel(2)[1, 1]  # [C_in, C_out]
    expected = F.interpolate(torch.einsum("bihw,io->bohw", x, mixing), scale_factor=2, mode="bilinear")
    torch.testing.assert_close(module(x), expected)


def test_bilinear_kernel_values_by_hand() -> None:
    # r = 2: k = 4, centre 1.5, weights 1 - |i - 1.5| / 2.
    ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(bilinear_kernel(2), ramp[:, None] * ramp[None, :])
    # r = 3: k = 5, centre 2, weights 1 - |i - 2| / 3.
    ramp = torch.tensor([1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3])
    torch.testing.assert_close(bilinear_kernel(3), ramp[:, None] * ramp[None, :])


def test_deconv_default_init_is_not_bilinear() -> None:
    x = torch.randn(1, 4, 5, 5)
    y = Upsample(4, mode="deconv", init="default")(x)
    assert not torch.allclose(y, F.interpolate(x, scale_factor=2, mode="bilinear"), atol=1e-2)


@pytest.mark.parametrize(("scale", "kernel_size"), [(2, 1), (2, 3), (3, 3)])
def test_pixelshuffle_with_icnr_starts_as_nearest_upsampling_of_its_conv(scale: int, kernel_size: int) -> None:
    x = torch.randn(2, 3, 5, 6)
    module = Upsample(3, 4, scale_factor=scale, mode="pixelshuffle", kernel_size=kernel_size)
    conv = module.body.conv
    groups = scale**2
    sub = F.conv2d(x, conv.weight[::groups], conv.bias[::groups], padding=kernel_size // 2)  # [B, 4, H, W]
    torch.testing.assert_close(module(x), F.interpolate(sub, scale_factor=scale, mode="nearest"))


def test_pixelshuffle_default_init_is_not_constant_on_blocks() -> None:
    y = Upsample(3, 4, mode="pixelshuffle", init="default")(torch.randn(1, 3, 5, 5))
    assert (y[..., 0::2, 0::2] - y[..., 1::2, 1::2]).abs().max() > 1e-2


def test_unpool_puts_each_value_back_at_its_max_position() -> None:
    features = torch.tensor(
        [[[[1.0, 9.0, 2.0, 0.0], [3.0, 4.0, 5.0, 8.0], [7.0, 1.0, 0.0, 1.0], [0.0, 2.0, 6.0, 3.0]]]]
    )
    pooled, indices = F.max_pool2d(features, 2, 2, return_indices=True)
    assert pooled.flatten().tolist() == [9.0, 8.0, 7.0, 6.0]
    values = torch.tensor([[[[10.0, 20.0], [30.0, 40.0]]]])
    expected = torch.tensor(
        [[[[0.0, 10.0, 0.0, 0.0], [0.0, 0.0, 0.0, 20.0], [30.0, 0.0, 0.0, 0.0], [0.0, 0.0, 40.0, 0.0]]]]
    )
    torch.testing.assert_close(upsample(values, 2, "unpool", indices=indices), expected)
    torch.testing.assert_close(Upsample(1, mode="unpool")(values, indices=indices), expected)


def test_unpool_restores_an_odd_size_with_output_size() -> None:
    features = torch.randn(1, 2, 7, 5)
    pooled, indices = F.max_pool2d(features, 2, 2, return_indices=True)
    restored = upsample(pooled, 2, "unpool", indices=indices, output_size=features.shape[-2:])
    assert restored.shape == features.shape
    # Every pooled maximum is back where it came from; everything else is zero.
    kept = restored != 0
    torch.testing.assert_close(restored[kept], features[kept])
    assert kept.sum() == pooled.numel()


def test_unpool_projection_acts_after_unpooling() -> None:
    pooled, indices = _pool_indices((1, 2, 6, 6), 2)
    module = Upsample(2, 3, mode="unpool")
    expected = module.project(upsample(pooled, 2, "unpool", indices=indices))
    torch.testing.assert_close(module(pooled, indices=indices), expected)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_interpolation_modes_equal_torch_interpolate(mode: str) -> None:
    x = torch.randn(2, 3, 5, 4)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    expected = F.interpolate(x, scale_factor=3, mode=mode, **kwargs)
    torch.testing.assert_close(upsample(x, 3, mode), expected)
    torch.testing.assert_close(Upsample(3, scale_factor=3, mode=mode)(x), expected)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_projection_at_low_resolution_equals_projection_after_interpolating(mode: str) -> None:
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    module = Upsample(3, 6, mode=mode).double()
    after = module.project(upsample(x, 2, mode))
    torch.testing.assert_close(module(x), after)


def test_nearest_by_hand() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = torch.tensor(
        [[[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0], [3.0, 3.0, 4.0, 4.0]]]]
    )
    torch.testing.assert_close(upsample(x), expected)


def _naive_carafe(module: Upsample, x: torch.Tensor) -> torch.Tensor:
    """CARAFE as the authors' reference: pixel-shuffle the kernel map, softmax over the taps,
    unfold the source neighbourhoods, copy them to the output grid and weight them."""
    carafe = module.body
    r, k = carafe.scale_factor, carafe.kernel_up
    batch, channels, height, width = x.shape
    kernels = F.pixel_shuffle(carafe.encoder(carafe.compressor(x)), r).softmax(dim=1)  # [B, k^2, rH, rW]
    patches = F.unfold(x, k, padding=k // 2).view(batch, channels * k * k, height, width)
    patches = F.interpolate(patches, scale_factor=r, mode="nearest").view(batch, channels, k * k, r * height, r * width)
    return (patches * kernels[:, None]).sum(dim=2)


def test_carafe_equals_a_naive_reassembly() -> None:
    x = torch.randn(2, 3, 5, 6)
    module = Upsample(3, mode="carafe", carafe_kernel=3, carafe_channels=8)
    torch.nn.init.normal_(module.body.encoder.weight)  # far from uniform kernels
    torch.testing.assert_close(module(x), _naive_carafe(module, x))


def test_carafe_starts_close_to_a_uniform_average_of_the_neighbourhood() -> None:
    x = torch.randn(1, 2, 6, 6)
    module = Upsample(2, mode="carafe", carafe_kernel=3)
    box = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
    # The kernel logits start within a few hundredths of zero (encoder weights ~ N(0, 0.001^2)).
    torch.testing.assert_close(module(x), F.interpolate(box, scale_factor=2), atol=0.05, rtol=0)
    torch.nn.init.zeros_(module.body.encoder.weight)
    torch.testing.assert_close(module(x), F.interpolate(box, scale_factor=2))


def test_carafe_reassembly_gradcheck() -> None:
    module = Upsample(2, mode="carafe", carafe_kernel=3, carafe_channels=4).double()
    torch.nn.init.normal_(module.body.encoder.weight)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "deconv", "pixelshuffle"])
def test_gradcheck(mode: str) -> None:
    module = Upsample(2, 3, mode=mode).double()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


def test_unpool_gradcheck() -> None:
    pooled, indices = _pool_indices((1, 2, 4, 6), 2)
    x = pooled.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: upsample(v, 2, "unpool", indices=indices), (x,))


def test_empty_batch() -> None:
    for mode in ("nearest", "deconv", "pixelshuffle", "carafe"):
        assert Upsample(3, 2, mode=mode)(torch.zeros(0, 3, 4, 4)).shape == (0, 2, 8, 8)


def test_half_precision_interpolation_keeps_the_dtype() -> None:
    x = torch.randn(1, 2, 3, 3).to(torch.bfloat16)
    assert upsample(x, 2, "bilinear").dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["deconv", "carafe"])
def test_onnx_export_matches_eager(mode: str, tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    module = Upsample(3, 4, mode=mode).eval()
    x = torch.randn(1, 3, 6, 8)
    path = tmp_path / "up.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_out), module(x), atol=1e-5, rtol=1e-4)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"mode must be one of .*got 'linear'"):
        Upsample(3, mode="linear")
    with pytest.raises(ValueError, match=r"learned modes need the module sightkit.nn.Upsample"):
        upsample(torch.zeros(1, 1, 2, 2), 2, "deconv")
    with pytest.raises(ValueError, match=r"scale_factor must be a positive integer, got 1.5"):
        upsample(torch.zeros(1, 1, 2, 2), 1.5)
    with pytest.raises(ValueError, match=r"scale_factor must be a positive integer, got 0"):
        Upsample(3, scale_factor=0)
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \[B, C, H, W\], got shape \(2, 2\)"):
        upsample(torch.zeros(2, 2))
    with pytest.raises(TypeError, match=r"x must be a tensor .* got list"):
        upsample([1.0])
    with pytest.raises(ValueError, match=r"x must have in_channels=3 channels, got shape \(1, 4, 2, 2\)"):
        Upsample(3)(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match=r"mode 'unpool' needs indices: .*kernel_size=2, stride=2"):
        Upsample(3, mode="unpool")(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"indices must have the shape of x \(1, 3, 2, 2\).*got \(1, 3, 1, 2\)"):
        upsample(torch.zeros(1, 3, 2, 2), 2, "unpool", indices=torch.zeros(1, 3, 1, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"indices and output_size apply to mode 'unpool' only"):
        Upsample(3, mode="bilinear")(torch.zeros(1, 3, 2, 2), indices=torch.zeros(1, 3, 2, 2, dtype=torch.int64))
    with pytest.raises(
        ValueError, match=r"init for mode 'deconv' must be one of \('bilinear', 'default'\), got 'icnr'"
    ):
        Upsample(3, mode="deconv", init="icnr")
    with pytest.raises(ValueError, match=r"init for mode 'nearest' must be None"):
        Upsample(3, init="bilinear")
    with pytest.raises(ValueError, match=r"kernel_size must be a positive odd integer, got 2"):
        Upsample(3, mode="pixelshuffle", kernel_size=2)
    with pytest.raises(ValueError, match=r"out_channels must be a positive integer, got 0"):
        Upsample(3, 0)
