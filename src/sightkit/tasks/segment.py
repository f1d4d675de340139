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
class names, the input size and the normalisation in their metadata. :class:`SegmentTask`
declares the parts to the task registry; :class:`SegmentPredictor` is what
:func:`sightkit.load` returns for segmentation weights (``Results.masks``: a class map).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from sightkit._api import export
from sightkit.config import EvalConfig, PredictConfig, setting, with_defaults
from sightkit.data.segmentation import SegmentationDataset, collate_segmentation, segmentation_transforms
from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sightkit.engine.checkpoint import load_weights
from sightkit.eval.segmentation import SegmentationEvaluator
from sightkit.losses.segmentation import SegmentationLoss
from sightkit.models.registry import create_model, list_models
from sightkit.models.seg import STRIDE
from sightkit.nn.upsample import UPSAMPLE_MODES
from sightkit.predictor import Predictor, frame_results, image_tensor, pad_images
from sightkit.results import Results
from sightkit.tasks import runner
from sightkit.tasks.common import TaskConfig
from sightkit.tasks.export import ExportSpec, example_input
from sightkit.tasks.registry import EvalPlan, Task, TrainingParts, register_task

TASK = "segment"


@export("tasks.SegmentConfig")
@dataclass
@with_defaults(
    model="unet_r18_tiny", data="runs/data/shapes", out="runs/segment/train", epochs=50, batch=8, lr=1e-3,
    best_metric="mIoU", best_mode="max",
)  # fmt: skip
class SegmentConfig(TaskConfig):
    """Settings of ``sightkit train segment``: the engine's keys plus the segmentation ones.
    Defaults train from scratch (AdamW lr 1e-3, cosine schedule, backbone at the full rate); the
    data is a folder of either layout of :mod:`sightkit.data.segmentation`."""

    upsample: str = setting("", f"upsampling mode ('' : the model's): {', '.join(UPSAMPLE_MODES)}")
    imgsz: int = setting(256, "crop side in training; shorter image side in evaluation")
    max_size: int = setting(0, "longest image side in evaluation (0: no limit)")
    scale_min: float = setting(0.5, "smallest random scale of the shorter side (x imgsz)")
    scale_max: float = setting(2.0, "largest random scale of the shorter side (x imgsz)")
    dice_weight: float = setting(0.0, "weight of the Dice loss next to cross-entropy (0: off)")
    ignore_index: int = setting(255, "mask value of unlabelled pixels")


@export("tasks.SegmentEvalConfig")
@dataclass
@with_defaults(data="runs/data/shapes")
class SegmentEvalConfig(EvalConfig):
    """Settings of ``sightkit eval segment``."""


@export("tasks.SegmentPredictConfig")
@dataclass
@with_defaults(out="runs/segment/predict", conf=0.0)
class SegmentPredictConfig(PredictConfig):
    """Settings of ``sightkit predict segment`` (``conf``: pixels whose best class is less probable
    than it are background)."""


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
    train = SegmentationDataset(
        config.data,
        config.train_split,
        train_transforms,
        ignore_index=config.ignore_index,
        max_pixels=config.max_pixels,
    )
    val = None
    if config.val_split:
        val = SegmentationDataset(
            config.data,
            config.val_split,
            segmentation_transforms("eval", size=config.imgsz, max_size=config.max_size or None, **normalise),
            ignore_index=config.ignore_index,
            keep_original=True,
            max_pixels=config.max_pixels,
        )
        if val.classes != train.classes:
            raise ValueError(f"splits {config.train_split!r} and {config.val_split!r} name different classes")
    return train, val


# --------------------------------------------------------------------------- model and weights


def check_model(name: str, upsample: str = "") -> None:
    """Raise ``ValueError`` unless ``name`` is a registered segmentation model and ``upsample``
    is ``''`` or a mode of :class:`sightkit.nn.Upsample`."""
    if name not in list_models(TASK):
        raise ValueError(f"model={name!r} is not a segment model; choose one of {', '.join(list_models(TASK))}")
    if upsample and upsample not in UPSAMPLE_MODES:
        raise ValueError(
            f"upsample must be one of {', '.join(UPSAMPLE_MODES)} (or '' for the model's), got {upsample!r}"
        )


def build_segmenter(name: str, num_classes: int, upsample: str = "") -> nn.Module:
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


def resized_logits(logits: Tensor, size: Sequence[int], output_size: Sequence[int]) -> Tensor:
    """One image's ``[K, h_pad, w_pad]`` logits cropped to its top-left ``size`` (the resized
    image before padding) and interpolated bilinearly to ``output_size``: ``[K, H, W]``."""
    cropped = logits[None, :, : int(size[0]), : int(size[1])]
    if tuple(cropped.shape[-2:]) != tuple(output_size):
        cropped = F.interpolate(cropped.float(), size=tuple(int(s) for s in output_size), mode="bilinear")
    return cropped[0]


def labels_at(logits: Tensor, size: Sequence[int], output_size: Sequence[int]) -> Tensor:
    """Class indices ``[H, W]`` at ``output_size`` (see :func:`resized_logits`)."""
    return resized_logits(logits, size, output_size).argmax(0)


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


# --------------------------------------------------------------------------- the predictor


@export("tasks.SegmentPredictor")
class SegmentPredictor(Predictor):
    """Segmentation weights, called on images: ``Results.masks``, the class index of every pixel
    of the original image (``[H, W]`` int64, 0 the background), and ``names``.

    Option ``conf``: pixels whose most probable class has a probability below it are background
    (default 0: the arg-max everywhere).
    """

    task = TASK
    options: ClassVar[dict[str, Any]] = {"conf": 0.0}

    def __init__(self, model: nn.Module, metadata: dict[str, str], device: Any = None) -> None:
        super().__init__(model, metadata, device)
        self.names = self.classes = json.loads(metadata["classes"])
        self.imgsz, self.max_size = int(metadata["imgsz"]), int(metadata["max_size"])
        self.ignore_index = int(metadata["ignore_index"])
        self.mean, self.std = json.loads(metadata["mean"]), json.loads(metadata["std"])
        self.transforms = segmentation_transforms(
            "eval", size=self.imgsz, max_size=self.max_size or None, mean=self.mean, std=self.std
        )

    def preprocess(self, frames: Sequence[Any], settings: dict[str, Any]) -> dict[str, Any]:
        images = [self.transforms(tv_tensors.Image(image_tensor(f))).as_subclass(Tensor) for f in frames]
        batch, _ = pad_images(images, STRIDE)
        return {"images": batch.to(self.device), "sizes": [image.shape[-2:] for image in images]}

    def forward(self, inputs: dict[str, Any]) -> Tensor:
        return self.model(inputs["images"])

    def postprocess(
        self, outputs: Tensor, inputs: dict[str, Any], frames: Sequence[Any], settings: dict[str, Any]
    ) -> list[Results]:
        results = []
        for logits, size, frame in zip(outputs, inputs["sizes"], frames, strict=True):
            probabilities = resized_logits(logits, size, frame.image.shape[:2]).softmax(0)
            best, labels = probabilities.max(0)
            labels[best < settings["conf"]] = 0
            results.append(frame_results(frame, TASK, self.names, masks=labels))
        return results


# --------------------------------------------------------------------------- the task


class SegmentTask(Task):
    """Semantic segmentation (``sightkit train|eval|predict segment``)."""

    name = TASK
    summary = "a class for every pixel (FCN, U-Net)"
    train_config, eval_config, predict_config = SegmentConfig, SegmentEvalConfig, SegmentPredictConfig

    def training_parts(self, config: SegmentConfig) -> TrainingParts:
        check_model(config.model, config.upsample)  # before reading any data
        train_set, val_set = build_datasets(config)
        model = build_segmenter(config.model, len(train_set.classes), config.upsample)
        criterion = SegmentCriterion(SegmentationLoss(config.ignore_index, config.dice_weight))
        evaluate = SegmentEvaluate(train_set.classes, config.ignore_index) if val_set is not None else None
        return TrainingParts(
            model,
            criterion,
            train_set,
            val_set,
            SegmentCollate(config.ignore_index),
            evaluate,
            weights_metadata(config, model, train_set.classes),
            loss_weights=criterion.weight_dict,
        )

    def load(self, weights: str | Path, metadata: dict[str, str], device: Any) -> SegmentPredictor:
        model = build_segmenter(metadata["model"], len(json.loads(metadata["classes"])), metadata.get("upsample", ""))
        return SegmentPredictor(load_weights(model, weights), metadata, device)

    def eval_plan(self, config: SegmentEvalConfig, predictor: SegmentPredictor) -> EvalPlan:
        dataset = SegmentationDataset(
            config.data, config.split, predictor.transforms, ignore_index=predictor.ignore_index, keep_original=True
        )
        if dataset.classes != predictor.classes:
            raise ValueError(
                f"the weights were trained on classes {predictor.classes}, but split {config.split!r} of "
                f"{config.data} has {dataset.classes}"
            )
        evaluate = SegmentEvaluate(predictor.classes, predictor.ignore_index)

        def report(out: Path, console: Console) -> list[str]:
            evaluator = evaluate.last
            per_class = [
                {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                for row in evaluator.per_class()
            ]
            (out / "per_class.json").write_text(json.dumps(per_class, indent=2))
            evaluator.plot_confusion(out / "confusion.png")
            console.print(evaluator.per_class_table())
            return ["per_class.json", "confusion.png"]

        title = f"segmentation metrics, {len(dataset)} images of split {config.split!r}"
        collate = SegmentCollate(predictor.ignore_index)
        return EvalPlan(dataset, collate, evaluate, title, report, f"eval_{config.split}")

    def onnx_predictor(self, model: nn.Module, metadata: dict[str, str], device: Any) -> SegmentPredictor:
        return SegmentPredictor(model, metadata, device)

    def export_spec(self, predictor: SegmentPredictor, imgsz: int = 0) -> ExportSpec:
        """The model, an example ``images`` [2, 3, S, S] (normalised, ``S`` the size rounded up to
        a multiple of 32) and dynamic batch, height and width (multiples of 32); the output is
        ``logits`` [B, K, H, W]."""
        side = math.ceil((imgsz or predictor.imgsz) / STRIDE) * STRIDE
        batch = torch.export.Dim("batch", max=64)
        height, width = torch.export.Dim("height_32", max=256), torch.export.Dim("width_32", max=256)
        return ExportSpec(
            module=predictor.model,
            name=predictor.name,
            inputs={"images": example_input(2, 3, side, side)},  # 2: a batch of 1 would be specialised
            output_names=["logits"],
            dynamic_shapes={"images": {0: batch, 2: STRIDE * height, 3: STRIDE * width}},
        )


SEGMENT = register_task(SegmentTask())


#: This task's modes (``sightkit.tasks.segment.train(config)``): the runner's, which read the task from the config;
#: and ``sightkit.load`` for its weights only.
train, evaluate, predict, load_segmenter = runner.train, runner.evaluate, runner.predict, SEGMENT.load_weights
