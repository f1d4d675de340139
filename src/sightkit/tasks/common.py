"""What every task's train, eval and predict commands share: the device setting, the dataset
files of ``data=``, building a ``model=`` of the task, and the metadata of a ``.safetensors``
weights file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from sightkit._api import export
from sightkit.config import setting
from sightkit.engine.trainer import TrainConfig
from sightkit.models.registry import create_model, list_models
from sightkit.predictor import resolve_device

__all__ = ["TaskConfig", "build_model", "dataset_files", "image_paths", "read_metadata", "resolve_device"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@export("tasks.TaskConfig")
@dataclass
class TaskConfig(TrainConfig):
    """The keys every ``sightkit train TASK`` adds to the engine's (:class:`TrainConfig`); a task's
    config subclasses it, sets its defaults with :func:`sightkit.config.with_defaults` and adds
    its own keys."""

    model: str = setting("", "model name (sightkit.models.list_models(TASK))")
    data: str = setting("", "dataset folder")
    train_split: str = setting("train", "split to train on")
    val_split: str = setting("val", "split to evaluate on during training ('' : none)")
    backbone_weights: str = setting(
        "default",
        "ImageNet weights of the ResNet backbone: default (the preset's paper weights: torchvision:resnet50 "
        "for the *_r50 presets, none for *_tiny), none, or a source (torchvision:resnet18, timm:NAME, "
        "a .pth/.safetensors file, hf:ORG/NAME/FILE)",
    )


def build_model(task: str, name: str, **overrides: Any) -> nn.Module:
    """``create_model(name, **overrides)`` for a model registered for ``task``, with clear errors
    for a model of another task and for overrides its builder does not take."""
    choices = list_models(task)
    if name not in choices:
        raise ValueError(f"model={name!r} is not a {task} model; choose one of {', '.join(choices)}")
    try:
        return create_model(name, **overrides)
    except TypeError as error:
        raise ValueError(f"settings {overrides} do not fit model={name!r}: {error}") from None


def dataset_files(data: str | Path, split: str, keypoints: bool = False) -> tuple[Path, Path]:
    """``(images folder, COCO JSON)`` of ``split`` in the dataset ``data``: a COCO folder
    (``images/`` + ``annotations/<split>.json``, or COCO's own naming), an ultralytics YOLO
    ``data.yaml`` (or its folder) or a Pascal VOC folder, read through
    :func:`sightkit.data.formats.dataset_annotations` (YOLO and VOC splits become a cached COCO JSON).

    Raises:
        FileNotFoundError: ``data`` is missing, in no known layout, or lacks ``split`` (the message
            lists what is there).
    """
    from sightkit.data.formats import dataset_annotations

    return dataset_annotations(data, split, keypoints=keypoints)


def image_paths(source: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES, argument: str = "source") -> list[Path]:
    """``source=`` of the predict commands (``argument`` names it in errors): one image file, or
    every image under a folder (sorted).

    Raises:
        ValueError: ``source`` is empty.
        FileNotFoundError: it does not exist, or the folder holds no image.
    """
    path = Path(source)
    if not source:
        raise ValueError(f"{argument}= is required: an image file or a folder of images")
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes)
        if not paths:
            raise FileNotFoundError(f"{argument}={source!r} holds no images ({', '.join(suffixes)})")
        return paths
    if not path.is_file():
        raise FileNotFoundError(f"{argument}={source!r} does not exist")
    return [path]


def read_metadata(weights: str | Path) -> dict[str, str]:
    """The metadata of a ``.safetensors`` weights file (clear errors for missing or foreign files)."""
    from safetensors import safe_open

    path = Path(weights)
    if not str(weights):
        raise ValueError("weights= is required: a .safetensors file written by `sightkit train`")
    if not path.is_file():
        raise FileNotFoundError(f"weights={str(path)!r} does not exist")
    if path.suffix != ".safetensors":
        raise ValueError(f"weights must be a .safetensors file written by `sightkit train`, got {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ValueError(f"weights={str(path)!r} is not a readable safetensors file ({error})") from None
