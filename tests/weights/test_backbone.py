"""ImageNet ResNet weights into sightkit's backbones: torchvision: sources through torch.hub's
cache, torchvision and timm state-dict files, every preset's default, and training from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from sightkit.models import build_backbone, build_detr, create_model
from sightkit.weights import (
    BACKBONE_WEIGHTS,
    LayoutMismatchError,
    WeightsUnavailableError,
    default_backbone_weights,
    load_backbone_weights,
)
from sightkit.weights.sources import fetch
from tests.weights.peers import randomise

#: torchvision's file names for its weights, as torch.hub caches them.
FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50.IMAGENET1K_V1": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-cd907fc2.pth",
}


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("SIGHTKIT_OFFLINE", "1")
    return tmp_path


def cache_torchvision(home: Path, spec: str, seed: int = 0) -> torch.nn.Module:
    """A random torchvision ResNet saved where torch.hub caches ``torchvision:<spec>``."""
    reference = randomise(getattr(torchvision.models, spec.split(".")[0])(), seed).eval()
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), folder / FILES[spec])
    return reference


def truncated(resnet: torch.nn.Module, images: torch.Tensor, last_stage: int) -> torch.Tensor:
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
    for stage in range(1, last_stage + 1):
        x = getattr(resnet, f"layer{stage}")(x)
    return x


@pytest.mark.parametrize(("spec", "last_stage", "norm"), [
    ("resnet18", 3, "bn"), ("resnet34", 4, "frozen_bn"), ("resnet50.IMAGENET1K_V1", 4, "frozen_bn"),
    pytest.param("resnet101", 2, "bn", marks=pytest.mark.slow),
])  # fmt: skip
def test_torchvision_source_loads_into_the_backbone(torch_home: Path, spec: str, last_stage: int, norm: str) -> None:
    reference = cache_torchvision(torch_home, spec)
    name = spec.split(".")[0]
    backbone = build_backbone(name, last_stage, trainable_stages=last_stage + 1 if norm == "bn" else 3, norm=norm)
    report = load_backbone_weights(backbone, f"torchvision:{spec}")
    # torchvision's own network with the same normalisation layer and memory format (the
    # backbone runs channels-last) computes the same arithmetic.
    same_norm = getattr(torchvision.models, name)(norm_layer=FrozenBatchNorm2d if norm == "frozen_bn" else None)
    same_norm.load_state_dict(reference.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = truncated(same_norm.eval(), images.contiguous(memory_format=torch.channels_last), last_stage)
        torch.testing.assert_close(backbone.eval()(images), expected, atol=1e-5, rtol=1e-5)
    kept = [k for k in reference.state_dict() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    kept = [k for k in kept if not k.startswith("layer") or int(k[5]) <= last_stage]
    assert report["loaded"] == len(kept)


def test_default_is_the_torchvision_v2_enum_and_unknown_tags_are_errors(torch_home: Path) -> None:
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(randomise(torchvision.models.resnet50()).state_dict(), folder / "resnet50-11ad3fa6.pth")
    assert fetch("torchvision:resnet50").path == folder / "resnet50-11ad3fa6.pth"  # ResNet50_Weights.DEFAULT (V2)
    with pytest.raises(
        ValueError, match="ResNet50_Weights has no 'IMAGENET9K'; choose one of IMAGENET1K_V1, IMAGENET1K_V2"
    ):
        fetch("torchvision:resnet50.IMAGENET9K")
    with pytest.raises(ValueError, match="torchvision has no model 'resnet7'"):
        fetch("torchvision:resnet7")


def test_missing_offline_is_one_line_naming_the_cache_file(torch_home: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as error:
        load_backbone_weights(create_model("detr_r18_tiny", num_classes=2), "torchvision:resnet18")
    message = str(error.value)
    assert "\n" not in message
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_timm_resnet_file_loads_into_the_backbone(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    reference = randomise(timm.create_model("resnet18", pretrained=False)).eval()
    path = tmp_path / "resnet18_timm.safetensors"
    from safetensors.torch import save_file

    save_file(reference.state_dict(), str(path))
    backbone = build_backbone("resnet18", 4, trainable_stages=3)
    load_backbone_weights(backbone, str(path))
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(images), reference.forward_features(images), atol=1e-5, rtol=1e-5)


def test_wrong_depth_is_a_mismatch_and_models_without_resnet_are_errors(torch_home: Path) -> None:
    cache_torchvision(torch_home, "resnet18")
    with pytest.raises(LayoutMismatchError, match=r"mis-shaped keys \(stem.1.weight|mis-shaped keys .*layer1.0"):
        load_backbone_weights(build_backbone("resnet50", 4), "torchvision:resnet18")
    with pytest.raises(ValueError, match="IResNet has no torchvision ResNet backbone"):
        load_backbone_weights(create_model("iresnet_tiny"), "torchvision:resnet18")
    assert load_backbone_weights(create_model("detr_r18_tiny", num_classes=2), "none")["loaded"] == 0


def test_every_papers_preset_defaults_to_imagenet_and_tiny_ones_to_none() -> None:
    from sightkit.models import list_models

    for name in ("detr_r50", "dino_r50", "vfnet_r50", "rle_r50", "regress_r50", "heatmap_r50", "fcn_r50", "unet_r50"):
        assert default_backbone_weights(name) == "torchvision:resnet50.IMAGENET1K_V1"
    assert all(default_backbone_weights(name) == "" for name in list_models() if "tiny" in name)
    assert set(BACKBONE_WEIGHTS) <= set(list_models())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONE_WEIGHTS))
def test_every_preset_backbone_takes_the_imagenet_weights(torch_home: Path, name: str) -> None:
    """The whole ResNet-50 lands in each preset (its body has every stage up to layer4)."""
    reference = cache_torchvision(torch_home, "resnet50.IMAGENET1K_V1")
    model = create_model(name)
    report = load_backbone_weights(model, default_backbone_weights(name))
    body = model.get_submodule(report["body"])
    torch.testing.assert_close(body.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    torch.testing.assert_close(body.stem[1].running_var, reference.bn1.running_var)


def test_training_from_the_weights_keeps_the_frozen_stages(torch_home: Path) -> None:
    """DETR's recipe: the stem and layer1 stay at the ImageNet values, layer2-4 train."""
    reference = cache_torchvision(torch_home, "resnet18")
    model = build_detr(num_classes=3, backbone="resnet18", d_model=32, nhead=2, num_encoder_layers=1,
                       num_decoder_layers=1, dim_feedforward=64, num_queries=5)  # fmt: skip
    load_backbone_weights(model, "torchvision:resnet18")
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    outputs = model(torch.randn(2, 3, 64, 64))
    (outputs["pred_logits"].square().mean() + outputs["pred_boxes"].sum()).backward()
    optimiser.step()
    body = model.backbone.body
    torch.testing.assert_close(body.stem[0].weight, reference.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(body.layer1[0].conv1.weight, reference.layer1[0].conv1.weight, rtol=0, atol=0)
    assert not torch.equal(body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_hf_source_strings_parse_into_repo_revision_and_file() -> None:
    from sightkit.weights.sources import parse_hf

    assert parse_hf("hf:facebook/detr-resnet-50") == ("facebook/detr-resnet-50", None, None)
    assert parse_hf("hf:facebook/detr-resnet-50@no_timm") == ("facebook/detr-resnet-50", "no_timm", None)
    assert parse_hf("hf:org/repo@v1/weights/backbone.pth") == ("org/repo", "v1", "weights/backbone.pth")
    with pytest.raises(ValueError, match=r"expected hf:ORG/NAME\[@REVISION\]\[/FILE\]"):
        parse_hf("hf:detr")


def test_transformers_resnet_classifier_loads_into_the_backbone(tmp_path: Path) -> None:
    """``microsoft/resnet-50``'s layout (ResNetForImageClassification, saved with save_pretrained)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512])
    reference = randomise(transformers.ResNetForImageClassification(config)).eval()
    reference.save_pretrained(tmp_path)
    backbone = build_backbone("resnet18", 4, trainable_stages=5, norm="bn")
    report = load_backbone_weights(backbone, str(tmp_path))
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = reference.resnet(images.contiguous(memory_format=torch.channels_last)).last_hidden_state
        torch.testing.assert_close(backbone.eval()(images), expected, atol=1e-5, rtol=1e-5)
    assert report["loaded"] == sum(not k.endswith("num_batches_tracked") for k in backbone.state_dict())
