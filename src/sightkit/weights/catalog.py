"""The public checkpoints that sightkit knows how to read, with their families and licences.

``sightkit weights list`` prints this table. Sources without a stable download address
(insightface's and RLE's model zoos are on Google Drive / OneDrive) are read from the file a
user downloaded (``FILE:`` rows); the table names the file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownSource:
    """One public checkpoint.

    Attributes:
        source: the source string (``hf:...``, ``torchvision:...``, a URL, or ``FILE:`` for a
            file the user downloads by hand).
        family: the converter that reads it.
        model: the sightkit model it becomes (``backbone`` for ImageNet weights of any backbone).
        what: what it is, in a few words.
        licence: the publisher's licence, to check before use.
    """

    source: str
    family: str
    model: str
    what: str
    licence: str


_DETR_URL = "https://dl.fbaipublicfiles.com/detr/"
_TV = "torchvision-resnet"
_IF = "insightface"
_IF_LICENCE = "MIT code; weights for non-commercial research only (insightface)"

KNOWN_SOURCES: tuple[KnownSource, ...] = (
    KnownSource(
        "hf:facebook/detr-resnet-50", "detr/transformers", "detr_r50", "DETR R50, COCO 2017 (42.0 AP)", "Apache-2.0"
    ),
    KnownSource(
        "hf:facebook/detr-resnet-101", "detr/transformers", "detr_r50", "DETR R101, COCO 2017 (43.5 AP)", "Apache-2.0"
    ),
    KnownSource(
        _DETR_URL + "detr-r50-e632da11.pth", "detr/facebookresearch", "detr_r50", "DETR R50 (torch.hub)", "Apache-2.0"
    ),
    KnownSource(
        _DETR_URL + "detr-r101-2c7b67e5.pth", "detr/facebookresearch", "detr_r50", "DETR R101 (torch.hub)", "Apache-2.0"
    ),
    KnownSource(
        "FILE:checkpoint0011_4scale.pth (IDEA-Research/DINO model zoo)",
        "dino/idea",
        "dino_r50",
        "DINO-4scale R50, 12 epochs (49.0 AP); also checkpoint0033_4scale.pth (36 epochs)",
        "Apache-2.0",
    ),
    KnownSource("torchvision:resnet18", _TV, "backbone", "ImageNet-1k ResNet-18", "BSD-3-Clause (torchvision)"),
    KnownSource("torchvision:resnet34", _TV, "backbone", "ImageNet-1k ResNet-34", "BSD-3-Clause (torchvision)"),
    KnownSource(
        "torchvision:resnet50.IMAGENET1K_V1",
        _TV,
        "backbone",
        "ImageNet-1k ResNet-50, the weights DETR, DINO, VFNet and RLE start from",
        "BSD-3-Clause (torchvision)",
    ),
    KnownSource(
        "torchvision:resnet50", _TV, "backbone", "ImageNet-1k ResNet-50, torchvision's V2 recipe", "BSD-3-Clause"
    ),
    KnownSource("torchvision:resnet101", _TV, "backbone", "ImageNet-1k ResNet-101", "BSD-3-Clause (torchvision)"),
    KnownSource("hf:microsoft/resnet-50", _TV, "backbone", "transformers' ImageNet ResNet-50", "Apache-2.0"),
    KnownSource("hf:timm/resnet50.a1_in1k", _TV, "backbone", "timm's ResNet-50 A1 recipe, from the hub", "Apache-2.0"),
    KnownSource("timm:resnet50.a1_in1k", _TV, "backbone", "timm's ResNet-50 (needs timm)", "Apache-2.0 (timm)"),
    KnownSource(
        "FILE:ms1mv3_arcface_r18_fp16/backbone.pth", _IF, "iresnet18", "ArcFace IResNet-18, MS1MV3", _IF_LICENCE
    ),
    KnownSource(
        "FILE:ms1mv3_arcface_r34_fp16/backbone.pth", _IF, "iresnet34", "ArcFace IResNet-34, MS1MV3", _IF_LICENCE
    ),
    KnownSource(
        "FILE:ms1mv3_arcface_r50_fp16/backbone.pth", _IF, "iresnet50", "ArcFace IResNet-50, MS1MV3", _IF_LICENCE
    ),
    KnownSource(
        "FILE:ms1mv3_arcface_r100_fp16/backbone.pth", _IF, "iresnet100", "ArcFace IResNet-100, MS1MV3", _IF_LICENCE
    ),
    KnownSource(
        "FILE:ms1mv3_arcface_mbf/backbone.pth", _IF, "mobilefacenet", "ArcFace MobileFaceNet (mbf)", _IF_LICENCE
    ),
    KnownSource(
        "FILE:coco_rle_r50 checkpoint (Jeff-sjtu/res-loglikelihood-regression)",
        "rle/regressflow",
        "rle_r50",
        "RLE RegressFlow ResNet-50, COCO keypoints",
        "no licence stated for the weights: check the repository",
    ),
)


def list_sources() -> list[KnownSource]:
    """Every known public checkpoint (module docstring)."""
    return list(KNOWN_SOURCES)
