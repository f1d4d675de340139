"""Backbones equal torchvision's ResNets cut at the same stage, freeze what they should, and
report their channels and stride truthfully."""

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FrozenBatchNorm2d

from sightkit.models import build_backbone


def randomise_frozen_bn(module: torch.nn.Module) -> None:
    """Fresh frozen BN is the identity; random statistics make a comparison sensitive to it."""
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize(
    ("name", "last_stage", "channels"), [("resnet18", 3, 256), ("resnet34", 2, 128), ("resnet50", 4, 2048)]
)
def test_resnet_backbone_equals_torchvision(name: str, last_stage: int, channels: int) -> None:
    backbone = build_backbone(name, last_stage=last_stage, trainable_stages=1).eval()
    randomise_frozen_bn(backbone)
    reference = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d).eval()
    renamed = {
        key.removeprefix("body.").replace("stem.0.", "conv1.").replace("stem.1.", "bn1."): value
        for key, value in backbone.state_dict().items()
    }
    missing, unexpected = reference.load_state_dict(renamed, strict=False)
    assert not unexpected
    assert all(key.startswith(("fc.", *(f"layer{i}." for i in range(last_stage + 1, 5)))) for key in missing)
    extractor = create_feature_extractor(reference, {f"layer{last_stage}": "out"})
    images = torch.randn(2, 3, 70, 45)
    with torch.no_grad():
        features = backbone(images)
        # Channels-last convolutions sum in another order: equal up to float32 rounding.
        torch.testing.assert_close(features, extractor(images)["out"], atol=1e-4, rtol=1e-4)
    stride = 2 ** (last_stage + 1)
    assert backbone.num_channels == channels == features.shape[1]
    assert backbone.stride == stride
    assert features.shape[-2:] == (-(-70 // stride), -(-45 // stride))


@pytest.mark.parametrize("trainable_stages", [0, 2, 4, 5])
def test_only_the_last_stages_train(trainable_stages: int) -> None:
    backbone = build_backbone("resnet18", last_stage=4, trainable_stages=trainable_stages)
    stages = ["stem", "layer1", "layer2", "layer3", "layer4"]
    for index, stage in enumerate(stages):
        flags = {p.requires_grad for p in getattr(backbone.body, stage).parameters()}
        assert flags == {index >= len(stages) - trainable_stages}, stage
    # Frozen BatchNorm has buffers only: nothing to train, nothing updated by a forward pass.
    assert not any("bn" in name for name, _ in backbone.named_parameters())


def test_batchnorm_backbone_trains_its_normalisation() -> None:
    backbone = build_backbone("resnet18", last_stage=3, trainable_stages=4, norm="bn")
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 1 + 2 * 2 * 3 + 2  # stem, two convs in each of 2 blocks x 3 stages, 2 downsamples
    images = torch.randn(4, 3, 64, 64) * 3 + 1
    backbone(images).sum().backward()
    assert all(m.weight.grad is not None and m.running_mean.abs().sum() > 0 for m in norms)
    # In training mode each channel of the stem is normalised with the batch statistics.
    stem = backbone.body.stem[:2]
    out = stem(images)
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(64), atol=1e-5, rtol=0)


def test_bad_backbone_settings_are_errors() -> None:
    with pytest.raises(ValueError, match=r"backbone name must be one of .* got 'resnet152'"):
        build_backbone("resnet152")
    with pytest.raises(ValueError, match="last_stage must be 1, 2, 3 or 4, got 5"):
        build_backbone("resnet18", last_stage=5)
    with pytest.raises(ValueError, match=r"trainable_stages must be in \[0, 3\] .* got 4"):
        build_backbone("resnet18", last_stage=2, trainable_stages=4)
    with pytest.raises(ValueError, match=r"norm must be one of \('frozen_bn', 'bn'\), got 'gn'"):
        build_backbone("resnet18", norm="gn")
    with pytest.raises(ValueError, match=r"norm='bn' .* all 5 stages must train .* got trainable_stages=3"):
        build_backbone("resnet18", trainable_stages=3, norm="bn")


def test_timm_backbone() -> None:
    pytest.importorskip("timm")
    backbone = build_backbone("timm/resnet18").eval()
    features = backbone(torch.randn(1, 3, 64, 96))
    assert backbone.num_channels == 512 and backbone.stride == 32
    assert features.shape == (1, 512, 2, 3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
