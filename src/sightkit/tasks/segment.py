"""Semantic segmentation: FCN / U-Net models on image + mask pairs, trained by the engine.

One place builds what a segmentation run needs from a typed config: the datasets and
transforms (:mod:`sightkit.data.segmentation`), the model (:func:`sightkit.models.create_model`
with ``upsample=`` any mode of :class:`sightkit.nn.Upsample`), the loss (cross-entropy with
an ignore index, optional Dice), the mIoU evaluator and the :class:`~sightkit.engine.Trainer`.
The command line (``sightkit train|eval|predict segment``, ``sightkit export onnx``) calls
:func:`train`, :func:`evaluate`, :func:`predict` and :func:`export_spec`.

A dataset is a folder in either layout of :mod:`sightkit.data.segmentation`: what
``sightkit data synth shapes`` writes (``images/``, ``masks/``, ``annotations/<split>.json``)
or ``images/<split>/`` + ``masks/<split>/`` + ``classes.txt``.

Evaluation scores each prediction at the resolution of its original mask: the logits of the
resized image are cropped to its unpadded area and interpolated bilinearly to the mask's
size before the arg-max. Weights files carry the task, the model name and its options, the
class names, the input size and the normalisation in their metadata.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sightkit._api import export
from sightkit.data.coco import read_image
from sightkit.data.segmentation import (
    IMAGE_SUFFIXES,
    SegmentationDataset,
    collate_segmentation,
    segmentation_transforms,
)
from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sightkit.engine.checkpoint import load_weights
from sightkit.engine.trainer import TrainConfig, Trainer
from sightkit.eval.segmentation import SegmentationEvaluator
from sightkit.losses.segmentation import SegmentationLoss
from sightkit.models.registry import create_model, list_models
from sightkit.models.seg import STRIDE
from sightkit.nn.upsample import UPSAMPLE_MODES
from sightkit.tasks.common import image_paths, read_metadata, resolve_device
from sightkit.tasks.draw import PALETTE
from sightkit.tasks.export import ExportSpec

TASK = "segment"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@export("tasks.SegmentConfig")
@dataclass
class SegmentConfig(TrainConfig):
    """Settings of ``sightkit train segment``: the engine's keys plus the segmentation ones.
    Defaults train from scratch (AdamW lr 1e-3, cosine schedule, backbone at the full rate)."""

    model: str = field(default="unet_r18_tiny", metadata=_help("model name: fcn_r18_tiny, fcn_r50, unet_r18_tiny, ..."))
    upsample: str = field(
        default="", metadata=_help(f"upsampling mode ('' : the model's): {', '.join(UPSAMPLE_MODES)}")
    )
    data: str = field(default="runs/data/shapes", metadata=_help("dataset folder: images/ and masks/ (module docs)"))
    train_split: str = field(default="train", metadata=_help("split to train on"))
    val_split: str = field(default="val", metadata=_help("split to evaluate on ('' : none)"))
    imgsz: int = field(default=256, metadata=_help("crop side in training; shorter image side in evaluation"))
    max_size: int = field(default=0, metadata=_help("longest image side in evaluation (0: no limit)"))
    scale_min: float = field(default=0.5, metadata=_help("smallest random scale of the shorter side (x imgsz)"))
    scale_max: float = field(default=2.0, metadata=_help("largest random scale of the shorter side (x imgsz)"))
    dice_weight: float = field(default=0.0, metadata=_help("weight of the Dice loss next to cross-entropy (0: off)"))
    ignore_index: int = field(default=255, metadata=_help("mask value of unlabelled pixels"))
    out: str = field(default="runs/segment/train", metadata=_help("run folder (checkpoints, metrics, plots)"))
    epochs: int = field(default=50, metadata=_help("passes over the training data (0: steps decides)"))
    batch: int = field(default=8, metadata=_help("global batch of one optimiser step, all processes together"))
    lr: float = field(default=1e-3, metadata=_help("base learning rate"))
    best_metric: str = field(default="mIoU", metadata=_help("metric that picks best.pt"))
    best_mode: str = field(default="max", metadata=_help("max or min: which way best_metric improves"))


@export("tasks.SegmentEvalConfig")
@dataclass
class SegmentEvalConfig:
    """Settings of ``sightkit eval segment``."""

    weights: str = field(default="", metadata=_help("a .safetensors file written by sightkit train segment"))
    data: str = field(default="runs/data/shapes", metadata=_help("dataset folder: images/ and masks/"))
    split: str = field(default="val", metadata=_help("split to evaluate"))
    out: str = field(default="", metadata=_help("folder for metrics.json and confusion.png ('' : next to weights)"))
    batch: int = field(default=8, metadata=_help("images per forward pass"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))
    workers: int = field(default=0, metadata=_help("DataLoader worker processes"))


@export("tasks.SegmentPredictConfig")
@dataclass
class SegmentPredictConfig:
    """Settings of ``sightkit predict segment``."""

    weights: str = field(default="", metadata=_help("a .safetensors file written by sightkit train segment"))
    source: str = field(default="", metadata=_help("an image or a folder of images"))
    out: str = field(default="runs/segment/predict", metadata=_help("folder for masks, pictures, predictions.json"))
    alpha: float = field(default=0.5, metadata=_help("opacity of the class colours over the image"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))


# --------------------------------------------------------------------------- data


class SegmentCollate:
    """Collate for the trainer: ``(images [B, 3, H, W], {"masks", "image_sizes", "orig_masks"})``
    with ``H, W`` padded to the model's stride. A class so that DataLoader workers can pickle it."""

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index

    def __call__(self, samples: Sequence[Any]) -> tuple[Tensor, dict[str, Any]]:
        batch = collate_segmentation(samples, STRIDE, self.ignore_index)
        return batch.images, {"masks": batch.masks, "image_sizes": batch.image_sizes, "orig_masks": batch.orig_masks}


class SegmentCriterion(nn.Module):
    """The engine's ``criterion(outputs, targets)``: :class:`SegmentationLoss` on the batch masks."""

    def __init__(self, loss: SegmentationLoss) -> None:
        super().__init__()
        self.loss = loss
        self.weight_dict = loss.weight_dict

    def forward(self, logits: Tensor, targets: dict[str, Any]) -> dict[str, Tensor]:
        return self.loss(logits, targets["masks"])


def build_datasets(config: SegmentConfig) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """The training set (random scale, flip, crop, jitter) and the validation set (resized,
    with the original masks for scoring)."""
    normalise = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    train_transforms = segmentation_transforms(
        "train",
        size=config.imgsz,
        scale_range=(config.scale_min, config.scale_max),
        ignore_index=config.ignore_index,
        **normalise,
    )
    train = SegmentationDataset(config.data, config.train_split, train_transforms, ignore_index=config.ignore_index)
    val = None
    if config.val_split:
        val = SegmentationDataset(
            config.data,
            config.val_split,
            segmentation_transforms("eval", size=config.imgsz, max_size=config.max_size or None, **normalise),
            ignore_index=config.ignore_index,
            keep_original=True,
        )
        if val.classes != train.classes:
            raise ValueError(f"splits {config.train_split!r} and {config.val_split!r} name different classes")
    return train, val


# --------------------------------------------------------------------------- model and weights


def check_model(name: str, upsample: str = "") -> None:
    """Raise ``ValueError`` unless ``name`` is a registered segmentation model and ``upsample``
    is ``''`` or a mode of :class:`sightkit.nn.Upsample`."""
    if name not in list_models():
        raise ValueError(f"model={name!r} is not a registered model; choose one of {', '.join(list_models())}")
    if not name.startswith(("fcn_", "unet_")):
        raise ValueError(f"model={name!r} is not a segmentation model; choose fcn_* or unet_*")
    if upsample and upsample not in UPSAMPLE_MODES:
        raise ValueError(
            f"upsample must be one of {', '.join(UPSAMPLE_MODES)} (or '' for the model's), got {upsample!r}"
        )


def build_model(name: str, num_classes: int, upsample: str = "") -> nn.Module:
    """``create_model(name, num_classes=..., upsample=...)`` after :func:`check_model`."""
    check_model(name, upsample)
    return create_model(name, num_classes=num_classes, **({"upsample": upsample} if upsample else {}))


def weights_metadata(config: SegmentConfig, model: nn.Module, classes: Sequence[str]) -> dict[str, str]:
    """What a weights file needs to rebuild and use its model, as safetensors metadata (str -> str)."""
    return {
        "task": TASK,
        "model": config.model,
        "upsample": model.upsample_mode,
        "classes": json.dumps(list(classes)),
        "imgsz": str(config.imgsz),
        "max_size": str(config.max_size),
        "ignore_index": str(config.ignore_index),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
    }


@dataclass
class LoadedSegmenter:
    """A model rebuilt from a weights file, with what its metadata says about it."""

    model: nn.Module
    name: str
    classes: list[str]
    imgsz: int
    max_size: int
    ignore_index: int
    mean: list[float]
    std: list[float]

    def transforms(self) -> Any:
        return segmentation_transforms(
            "eval", size=self.imgsz, max_size=self.max_size or None, mean=self.mean, std=self.std
        )


def load_segmenter(weights: str | Path, device: torch.device | str = "cpu") -> LoadedSegmenter:
    """Rebuild the model that wrote ``weights`` and load them.

    Raises:
        ValueError: the file was not written by ``sightkit train segment``.
    """
    meta = read_metadata(weights)
    if meta.get("task") != TASK or "model" not in meta:
        raise ValueError(
            f"weights={str(weights)!r} were not written by `sightkit train segment` (their metadata: "
            f"task={meta.get('task')!r}, model={meta.get('model')!r})"
        )
    classes = json.loads(meta["classes"])
    model = build_model(meta["model"], len(classes), meta.get("upsample", ""))
    load_weights(model, weights)
    return LoadedSegmenter(
        model=model.to(device).eval(),
        name=meta["model"],
        classes=classes,
        imgsz=int(meta["imgsz"]),
        max_size=int(meta["max_size"]),
        ignore_index=int(meta["ignore_index"]),
        mean=json.loads(meta["mean"]),
        std=json.loads(meta["std"]),
    )


def labels_at(logits: Tensor, size: Sequence[int], output_size: Sequence[int]) -> Tensor:
    """Class indices ``[H, W]`` at ``output_size`` from one image's ``[K, h_pad, w_pad]`` logits,
    of which the top-left ``size`` (the resized image before padding) is the image."""
    cropped = logits[None, :, : int(size[0]), : int(size[1])]
    if tuple(cropped.shape[-2:]) != tuple(output_size):
        cropped = F.interpolate(cropped.float(), size=tuple(int(s) for s in output_size), mode="bilinear")
    return cropped[0].argmax(0)


# --------------------------------------------------------------------------- evaluation


class SegmentEvaluate:
    """The engine's ``evaluate(model, loader)``: mIoU, pixel and mean accuracy of the loader's
    images at the resolution of their original masks (each rank counts its shard, one
    ``all_reduce`` sums the confusion matrices)."""

    def __init__(self, classes: Sequence[str], ignore_index: int = 255) -> None:
        self.classes = list(classes)
        self.ignore_index = ignore_index
        self.last: SegmentationEvaluator | None = None

    @torch.no_grad()
    def __call__(self, model: nn.Module, loader: DataLoader, progress: Progress | None = None) -> dict[str, float]:
        evaluator = SegmentationEvaluator(len(self.classes), self.ignore_index, self.classes)
        device = next(model.parameters()).device
        task = progress.add_task("evaluating", total=len(loader)) if progress is not None else None
        for images, targets in loader:
            logits = model(images.to(device))
            originals = targets["orig_masks"] or [None] * len(logits)
            for i, original in enumerate(originals):
                if original is None:  # no original masks: score the batch masks as they are
                    evaluator.update(logits[i].argmax(0), targets["masks"][i].to(device))
                    continue
                original = original.to(device)
                evaluator.update(labels_at(logits[i], targets["image_sizes"][i], original.shape), original)
            if progress is not None and task is not None:
                progress.advance(task)
        self.last = evaluator
        return evaluator.compute()


# --------------------------------------------------------------------------- pictures


def overlay_mask(
    image: Tensor, labels: Tensor, classes: Sequence[str], path: str | Path, alpha: float = 0.5
) -> Image.Image:
    """Blend a colour per class (none for class 0, the background) over ``image`` (uint8
    ``[3, H, W]``), add a legend of the classes present, save to ``path``; returns the picture."""
    pixels = image.permute(1, 2, 0).cpu().numpy().astype(np.float32)
    labels_np = labels.cpu().numpy()
    colours = np.array([(0, 0, 0), *(PALETTE[k % len(PALETTE)] for k in range(len(classes) - 1))], dtype=np.float32)
    painted = labels_np > 0
    pixels[painted] = (1 - alpha) * pixels[painted] + alpha * colours[labels_np[painted]]
    picture = Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, max(picture.size) // 30))
    y = 2
    for k in sorted(set(np.unique(labels_np).tolist()) - {0}):
        left, top, right, bottom = draw.textbbox((4, y), classes[k], font=font)
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=tuple(int(c) for c in colours[k]))
        draw.text((4, y), classes[k], fill=(255, 255, 255), font=font)
        y = bottom + 3
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, quality=92)
    return picture


def save_label_png(labels: Tensor, classes: Sequence[str], path: str | Path) -> None:
    """Write class indices as an 8-bit palette PNG (readable back as a mask; viewers show the colours)."""
    picture = Image.fromarray(labels.cpu().numpy().astype(np.uint8)).convert("P")
    palette = [0, 0, 0] + [c for k in range(len(classes) - 1) for c in PALETTE[k % len(PALETTE)]]
    picture.putpalette(palette + [0] * (768 - len(palette)))
    picture.save(path)


# --------------------------------------------------------------------------- the four modes


@export("tasks.train_segment")
def train(config: SegmentConfig) -> dict[str, float]:
    """Train a segmentation model as ``config`` says; returns the last evaluation's metrics.

    Writes ``config.out``: ``config.yaml``, ``metrics.jsonl``, checkpoints, ``last.safetensors``
    and ``best.safetensors`` (with the metadata :func:`load_segmenter` reads) and ``curves.png``.
    """
    check_model(config.model, config.upsample)  # before reading any data
    train_set, val_set = build_datasets(config)
    torch.manual_seed(config.seed)  # the Trainer seeds after the model exists: seed= fixes its initialisation too
    model = build_model(config.model, len(train_set.classes), config.upsample)
    criterion = SegmentCriterion(SegmentationLoss(config.ignore_index, config.dice_weight))
    evaluate_fn = SegmentEvaluate(train_set.classes, config.ignore_index) if val_set is not None else None
    if val_set is None and config.best_metric == "mIoU":
        config.best_metric, config.best_mode = "val_loss", "min"
    trainer = Trainer(
        model,
        criterion,
        train_set,
        config,
        loss_weights=criterion.weight_dict,
        val_data=val_set,
        collate_fn=SegmentCollate(config.ignore_index),
        evaluate=evaluate_fn,
        weights_metadata=weights_metadata(config, model, train_set.classes),
    )
    return trainer.fit()


@export("tasks.evaluate_segment")
def evaluate(config: SegmentEvalConfig, console: Console | None = None) -> dict[str, float]:
    """mIoU, pixel accuracy and per-class IoU of a weights file on a dataset split; writes
    ``metrics.json``, ``per_class.json`` and ``confusion.png`` to ``config.out``."""
    console = console or Console()
    segmenter = load_segmenter(config.weights, resolve_device(config.device))
    dataset = SegmentationDataset(
        config.data, config.split, segmenter.transforms(), ignore_index=segmenter.ignore_index, keep_original=True
    )
    if dataset.classes != segmenter.classes:
        raise ValueError(
            f"the weights were trained on classes {segmenter.classes}, but split {config.split!r} of {config.data} "
            f"has {dataset.classes}"
        )
    loader = DataLoader(
        dataset, batch_size=config.batch, num_workers=config.workers, collate_fn=SegmentCollate(segmenter.ignore_index)
    )
    evaluate_fn = SegmentEvaluate(segmenter.classes, segmenter.ignore_index)
    with Progress(console=console, transient=True) as progress:
        metrics = evaluate_fn(segmenter.model, loader, progress)
    evaluator = evaluate_fn.last
    assert evaluator is not None  # set by the call above
    out = Path(config.out) if config.out else Path(config.weights).parent / f"eval_{config.split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    per_class = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in evaluator.per_class()
    ]
    (out / "per_class.json").write_text(json.dumps(per_class, indent=2))
    evaluator.plot_confusion(out / "confusion.png")
    table = Table(title=f"segmentation metrics, {len(dataset)} images of split {config.split!r}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(evaluator.per_class_table())
    console.print(f"wrote {out / 'metrics.json'}, {out / 'per_class.json'} and {out / 'confusion.png'}")
    return metrics


@export("tasks.predict_segment")
def predict(config: SegmentPredictConfig, console: Console | None = None) -> list[dict[str, Any]]:
    """Segment an image or a folder of images: for each, ``<stem>_mask.png`` (class indices,
    palette PNG), ``<stem>.jpg`` (classes blended over the image) and a record in
    ``predictions.json`` with the fraction of the image each class covers."""
    if not 0 <= config.alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {config.alpha}")
    console = console or Console()
    device = resolve_device(config.device)
    segmenter = load_segmenter(config.weights, device)
    transforms = segmenter.transforms()
    paths = image_paths(config.source, IMAGE_SUFFIXES)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with Progress(console=console, transient=True) as progress, torch.no_grad():
        task = progress.add_task("predicting", total=len(paths))
        for path in paths:
            image = read_image(path)
            tensor = transforms(image).as_subclass(Tensor)
            size = tensor.shape[-2:]
            padded = F.pad(tensor, (0, -size[1] % STRIDE, 0, -size[0] % STRIDE))
            logits = segmenter.model(padded[None].to(device))[0]
            labels = labels_at(logits, size, image.shape[-2:]).cpu()
            mask_path, picture = out / f"{path.stem}_mask.png", out / f"{path.stem}.jpg"
            save_label_png(labels, segmenter.classes, mask_path)
            overlay_mask(image, labels, segmenter.classes, picture, config.alpha)
            counts = torch.bincount(labels.flatten(), minlength=len(segmenter.classes)).tolist()
            fractions = {name: round(c / labels.numel(), 4) for name, c in zip(segmenter.classes, counts, strict=True)}
            records.append({"image": str(path), "mask": str(mask_path), "picture": str(picture), "classes": fractions})
            progress.advance(task)
    (out / "predictions.json").write_text(json.dumps(records, indent=2))
    console.print(f"segmented {len(paths)} images; masks, pictures and predictions.json in [bold]{out}[/]")
    return records


def export_spec(weights: str | Path, imgsz: int = 0) -> ExportSpec:
    """What ``sightkit export onnx`` needs for segmentation weights: the model, an example
    ``images`` [1, 3, S, S] (normalised, ``S`` the size rounded up to a multiple of 32) and
    dynamic batch, height and width (multiples of 32); the output is ``logits`` [B, K, H, W]."""
    segmenter = load_segmenter(weights)
    side = math.ceil((imgsz or segmenter.imgsz) / STRIDE) * STRIDE
    batch = torch.export.Dim("batch", max=64)
    height, width = torch.export.Dim("height_32", max=256), torch.export.Dim("width_32", max=256)
    return ExportSpec(
        module=segmenter.model,
        name=segmenter.name,
        inputs={"images": torch.randn(1, 3, side, side)},
        output_names=["logits"],
        dynamic_shapes={"images": {0: batch, 2: STRIDE * height, 3: STRIDE * width}},
    )
