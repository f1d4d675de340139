"""Segmentation models: every registered one and every upsampling mode runs forward and
backward with a gradient for each parameter; the encoder pyramid's strides and channels;
FCN-8s has torchvision's FCN-ResNet-50 parameters plus exactly its skip and upsampling
layers; ONNX parity; the U-Net overfits a few synthetic images to mIoU >= 0.9."""

import numpy as np
import pytest
import torch
import torchvision

from sightkit.data.synthetic.shapes import SHAPE_CLASSES, render_shapes
from sightkit.eval import SegmentationEvaluator
from sightkit.losses import SegmentationLoss
from sightkit.models import FCN, UNet, build_backbone, create_model, list_models
from sightkit.models.seg import ResNetPyramid
from sightkit.nn.upsample import UPSAMPLE_MODES

SEG_MODELS = [name for name in list_models() if name.startswith(("fcn_", "unet_"))]
HEIGHT, WIDTH = 64, 96


def _check_forward_backward(model: torch.nn.Module, classes: int) -> None:
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    logits = model(images)
    assert logits.shape == (2, classes, HEIGHT, WIDTH) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_registered_models() -> None:
    assert set(SEG_MODELS) == {"fcn_r18_tiny", "fcn_r50", "unet_r18_tiny", "unet_r50"}


@pytest.mark.parametrize("name", SEG_MODELS)
def test_every_model_forward_and_backward(name: str) -> None:
    _check_forward_backward(create_model(name, num_classes=3), 3)


@pytest.mark.parametrize("mode", UPSAMPLE_MODES)
@pytest.mark.parametrize("name", ["fcn_r18_tiny", "unet_r18_tiny"])
def test_every_upsampling_mode(name: str, mode: str) -> None:
    model = create_model(name, num_classes=4, upsample=mode)
    assert model.upsample_mode == mode
    _check_forward_backward(model, 4)


@pytest.mark.parametrize(
    ("backbone", "channels"), [("resnet18", [64, 64, 128, 256, 512]), ("resnet50", [64, 256, 512, 1024, 2048])]
)
def test_pyramid_strides_and_channels(backbone: str, channels: list[int]) -> None:
    pyramid = ResNetPyramid(build_backbone(backbone, trainable_stages=5, norm="bn"))
    assert pyramid.channels == channels
    features = pyramid(torch.randn(1, 3, HEIGHT, WIDTH))
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, HEIGHT // s, WIDTH // s) for c, s in zip(channels, (2, 4, 8, 16, 32), strict=True)
    ]


def test_fcn_r50_is_torchvision_fcn_plus_the_fcn8s_layers() -> None:
    reference = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=False
    )
    model = create_model("fcn_r50", num_classes=21)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.backbone) == count(reference.backbone)
    assert count(model.head) == count(reference.classifier)
    # score layers on the stride-16 (1024 ch) and stride-8 (512 ch) features, and two
    # 21 -> 21 deconvolutions with 4 x 4 kernels.
    extra = (1024 + 1) * 21 + (512 + 1) * 21 + 2 * (21 * 21 * 4 * 4 + 21)
    assert count(model) == count(reference) + extra


def test_fcn_starts_as_fcn32s() -> None:
    # The skip score layers start at zero, so the stride-16 and stride-8 features have no
    # effect until training moves them.
    model = create_model("fcn_r18_tiny", num_classes=3).eval()
    images = torch.randn(1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        baseline = model(images)
        f32 = model.backbone(images)[-1]
        expected = torch.nn.functional.interpolate(
            model.up8(model.up16(model.head(f32))), size=(HEIGHT, WIDTH), mode="bilinear"
        )
    torch.testing.assert_close(baseline, expected)
    # deconv starts bilinear: three bilinear steps, x2, x2 and x8.
    with torch.no_grad():
        bilinear = torch.nn.functional.interpolate(model.head(f32), scale_factor=2, mode="bilinear")
        bilinear = torch.nn.functional.interpolate(bilinear, scale_factor=2, mode="bilinear")
        bilinear = torch.nn.functional.interpolate(bilinear, size=(HEIGHT, WIDTH), mode="bilinear")
    torch.testing.assert_close(baseline, bilinear)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mode"), [("unet_r18_tiny", "unpool")])
def test_onnx_export_matches_eager(name: str, mode: str, tmp_path: object) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = create_model(name, num_classes=3, upsample=mode).eval()
    images = torch.randn(1, 3, HEIGHT, WIDTH)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (images,), path, dynamo=True, optimize=False, input_names=["images"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(images), atol=1e-4, rtol=1e-4)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"upsample must be one of .*got 'linear'"):
        create_model("unet_r18_tiny", upsample="linear")
    with pytest.raises(ValueError, match=r"images height and width must be multiples of 32 .*got \(40, 64\)"):
        create_model("unet_r18_tiny", num_classes=2)(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match=r"images must be a \[B, 3, H, W\] tensor, got \(1, 1, 32, 32\)"):
        create_model("fcn_r18_tiny", num_classes=2)(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="need a torchvision ResNet backbone up to layer4"):
        UNet(build_backbone("resnet18", last_stage=3), 2)
    with pytest.raises(ValueError, match="decoder_channels must be 4 positive numbers"):
        create_model("unet_r18_tiny", decoder_channels=(8, 8))
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        FCN(build_backbone("resnet18"), 0)


def _shapes_batch(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(5)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    images, masks = [], []
    for _ in range(count):
        image, shapes = render_shapes(rng, size, size, max_objects=4)
        mask = np.zeros((size, size), dtype=np.int64)
        for shape in shapes:
            mask[shape.mask] = shape.label + 1
        images.append(
            (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean[:, None, None]) / std[:, None, None]
        )
        masks.append(torch.from_numpy(mask))
    return torch.stack(images), torch.stack(masks)


@pytest.mark.slow
def test_unet_overfits_a_few_synthetic_images() -> None:
    images, masks = _shapes_batch(4, 64)
    classes = len(SHAPE_CLASSES) + 1
    model = create_model("unet_r18_tiny", num_classes=classes)
    criterion = SegmentationLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    best = 0.0
    for step in range(1, 301):
        model.train()
        loss = criterion(model(images), masks)["loss_ce"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            evaluator = SegmentationEvaluator(classes)
            with torch.no_grad():
                evaluator.update(model(images).argmax(1), masks)
            best = max(best, evaluator.compute()["mIoU"])
            if best >= 0.9:
                break
    assert best >= 0.9, f"mIoU {best:.3f} after {step} steps"
