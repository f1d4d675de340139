"""Object detection: DETR-family models (DETR, DINO) on COCO-format data, trained by the engine.

One place builds everything a detection run needs from a typed config: the datasets and
transforms (:mod:`sightkit.data`), the model (:func:`sightkit.models.create_model`), the set
criterion and its loss weights, the COCO evaluator, and the :class:`~sightkit.engine.Trainer`.
The command line (``sightkit train|eval|predict detect``, ``sightkit export onnx``) calls
:func:`train`, :func:`evaluate`, :func:`predict` and (through :mod:`sightkit.tasks.export`)
:func:`export_spec`.

A dataset is a folder in the layout that ``sightkit data synth`` writes (and that COCO uses)::

    DATA/images/...                 images, file_name in the JSON is relative to this folder
    DATA/annotations/train.json     COCO detection JSON
    DATA/annotations/val.json

Weights files (``.safetensors``) carry what is needed to rebuild and use the model in
their metadata: the task, the model name, the class names and category ids, the input
size and the normalisation.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.ops import DeformConv2d

from sightkit._api import export
from sightkit.data.coco import CocoDetection, read_image
from sightkit.data.collate import collate_detection
from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, detection_transforms
from sightkit.engine.checkpoint import load_weights
from sightkit.engine.data import call_model, to_device
from sightkit.engine.distributed import unwrap_model
from sightkit.engine.trainer import TrainConfig, Trainer
from sightkit.eval.coco import CocoEvaluator
from sightkit.losses.set_criterion import SetCriterion
from sightkit.models.detr_postprocess import detr_postprocess
from sightkit.models.registry import create_model, list_models
from sightkit.ops.boxes import box_convert
from sightkit.tasks.common import image_paths, read_metadata, resolve_device
from sightkit.tasks.export import ExportSpec

TASK = "detect"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@export("tasks.DetectConfig")
@dataclass
class DetectConfig(TrainConfig):
    """Settings of ``sightkit train detect``: the engine's keys plus the detection ones, with
    DETR's recipe as defaults (AdamW lr 1e-4, backbone lr x0.1, weight decay 1e-4, gradient
    clipping at norm 0.1)."""

    model: str = field(default="detr_r18_tiny", metadata=_help("model name (sightkit.models.list_models())"))
    model_args: dict[str, Any] = field(
        default_factory=dict, metadata=_help("builder overrides, e.g. '{cls_loss: focal, refine: false}' (VFNet)")
    )
    data: str = field(default="runs/data/shapes", metadata=_help("dataset folder: images/, annotations/*.json"))
    train_split: str = field(default="train", metadata=_help("annotations/<train_split>.json for training"))
    val_split: str = field(default="val", metadata=_help("annotations/<val_split>.json for evaluation ('' : none)"))
    imgsz: int = field(default=320, metadata=_help("shorter image side (the train recipe scales around it)"))
    max_size: int = field(default=512, metadata=_help("longest image side"))
    eos_coef: float = field(
        default=0.1, metadata=_help("weight of the 'no object' class in DETR's cross-entropy (softmax models)")
    )
    top_k: int = field(default=100, metadata=_help("detections kept per image at evaluation"))
    out: str = field(default="runs/detect/train", metadata=_help("run folder (checkpoints, metrics, plots)"))
    epochs: int = field(default=50, metadata=_help("passes over the training data (0: steps decides)"))
    batch: int = field(default=8, metadata=_help("global batch of one optimiser step, all processes together"))
    backbone_lr_mult: float = field(default=0.1, metadata=_help("backbone learning-rate multiplier (DETR: 0.1)"))
    clip_grad_norm: float = field(default=0.1, metadata=_help("clip gradients to this total norm (0: off)"))
    best_metric: str = field(default="AP", metadata=_help("metric that picks best.pt"))
    best_mode: str = field(default="max", metadata=_help("max or min: which way best_metric improves"))


@export("tasks.DetectEvalConfig")
@dataclass
class DetectEvalConfig:
    """Settings of ``sightkit eval detect``."""

    weights: str = field(default="", metadata=_help("a .safetensors file written by sightkit train detect"))
    data: str = field(default="runs/data/shapes", metadata=_help("dataset folder: images/, annotations/*.json"))
    split: str = field(default="val", metadata=_help("annotations/<split>.json to evaluate"))
    out: str = field(default="", metadata=_help("folder for metrics.json and pr_curve.png ('' : next to weights)"))
    batch: int = field(default=8, metadata=_help("images per forward pass"))
    top_k: int = field(default=100, metadata=_help("detections kept per image"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))
    workers: int = field(default=0, metadata=_help("DataLoader worker processes"))


@export("tasks.DetectPredictConfig")
@dataclass
class DetectPredictConfig:
    """Settings of ``sightkit predict detect``."""

    weights: str = field(default="", metadata=_help("a .safetensors file written by sightkit train detect"))
    source: str = field(default="", metadata=_help("an image or a folder of images"))
    out: str = field(default="runs/detect/predict", metadata=_help("folder for the pictures and detections.json"))
    conf: float = field(default=0.5, metadata=_help("draw and save detections scoring at least this"))
    top_k: int = field(default=100, metadata=_help("detections kept per image"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))


# --------------------------------------------------------------------------- data


def dataset_files(data: str | Path, split: str) -> tuple[Path, Path]:
    """``(images folder, annotation JSON)`` of ``split`` in the dataset folder ``data``.

    Raises:
        FileNotFoundError: the folder or the JSON is missing (the message lists what is there).
    """
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data={str(root)!r} is not a folder; make one with `sightkit data synth shapes out={root}` "
            "or point data= at a folder holding images/ and annotations/<split>.json"
        )
    annotations = root / "annotations" / f"{split}.json"
    if not annotations.is_file():
        found = sorted(p.name for p in (root / "annotations").glob("*.json")) if (root / "annotations").is_dir() else []
        raise FileNotFoundError(
            f"no annotations for split {split!r}: {annotations} does not exist (annotations found: {found or 'none'})"
        )
    return root / "images", annotations


class DetrCollate:
    """Collate detection samples for DETR: pad images into a batch with its padding mask, and
    give the criterion boxes as ``cxcywh`` normalised by each image's unpadded size.

    Returns ``(inputs, targets)``: ``inputs = {"images": [B,3,H,W], "mask": [B,H,W]}`` (the
    model's keyword arguments) and one target dict per image with ``"labels"``, ``"boxes"``
    (normalised ``cxcywh``), ``"image_id"`` and ``"orig_size"`` (``(h, w)`` before resizing).
    With ``with_targets`` the inputs also hold ``"targets"`` (the same list), for models that
    read the targets in training (DINO's denoising queries).
    A class rather than a closure so that DataLoader workers can pickle it.
    """

    def __init__(self, size_divisible: int = 32, with_targets: bool = False) -> None:
        self.size_divisible = size_divisible
        self.with_targets = with_targets

    def __call__(self, samples: Sequence[Any]) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
        batch = collate_detection(samples, self.size_divisible)
        targets = []
        for target, (height, width) in zip(batch.targets, batch.image_sizes.tolist(), strict=True):
            boxes = target["boxes"].as_subclass(Tensor).float()
            scale = boxes.new_tensor([width, height, width, height])
            targets.append(
                {
                    "labels": target["labels"],
                    "boxes": box_convert(boxes / scale, "xyxy", "cxcywh"),
                    "image_id": int(target["image_id"]),
                    "orig_size": target["orig_size"],
                }
            )
        inputs = {"images": batch.images, "mask": batch.padding_mask}
        if self.with_targets:
            inputs["targets"] = targets
        return inputs, targets


class DenseCollate:
    """Collate detection samples for dense detectors (VFNet): the inputs of :class:`DetrCollate`
    (padded images and padding mask), and targets whose ``"boxes"`` stay absolute ``xyxy`` in
    the pixels of the resized image, as ATSS assignment and the GIoU losses need them.
    """

    def __init__(self, size_divisible: int = 32) -> None:
        self.size_divisible = size_divisible

    def __call__(self, samples: Sequence[Any]) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
        batch = collate_detection(samples, self.size_divisible)
        targets = [
            {
                "labels": target["labels"],
                "boxes": target["boxes"].as_subclass(Tensor).float(),
                "image_id": int(target["image_id"]),
                "orig_size": target["orig_size"],
            }
            for target in batch.targets
        ]
        return {"images": batch.images, "mask": batch.padding_mask}, targets


def build_datasets(config: DetectConfig) -> tuple[CocoDetection, CocoDetection | None]:
    """The training and validation datasets with DETR's transforms at ``config.imgsz``."""
    normalise = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    images, train_json = dataset_files(config.data, config.train_split)
    train = CocoDetection(
        images, train_json, detection_transforms("train", size=config.imgsz, max_size=config.max_size, **normalise)
    )
    val = None
    if config.val_split:
        images, val_json = dataset_files(config.data, config.val_split)
        val = CocoDetection(
            images, val_json, detection_transforms("eval", size=config.imgsz, max_size=config.max_size, **normalise)
        )
        if val.category_map.category_ids != train.category_map.category_ids:
            raise ValueError(
                f"{val_json} and {train_json} have different categories "
                f"({val.category_map.category_ids} vs {train.category_map.category_ids})"
            )
    return train, val


# --------------------------------------------------------------------------- model and weights


def build_model(name: str, num_classes: int, overrides: dict[str, Any] | None = None) -> nn.Module:
    """``create_model(name, num_classes=..., **overrides)`` with clear errors for unknown names
    and for overrides the model's builder does not take."""
    if name not in list_models():
        raise ValueError(f"model={name!r} is not a registered model; choose one of {', '.join(list_models())}")
    try:
        return create_model(name, num_classes=num_classes, **(overrides or {}))
    except TypeError as error:
        raise ValueError(f"model_args {overrides} do not fit model={name!r}: {error}") from None


def build_criterion(model: nn.Module, num_classes: int, config: DetectConfig) -> nn.Module:
    """The model's own criterion when it declares one (``model.build_criterion()``: DINO's
    varifocal and denoising losses), else DETR's :class:`SetCriterion` (softmax with "no object")."""
    if callable(getattr(model, "build_criterion", None)):
        return model.build_criterion()
    aux_layers = len(model.transformer.decoder_layers) - 1 if getattr(model, "aux_loss", False) else 0
    return SetCriterion(num_classes, eos_coef=config.eos_coef, aux_layers=aux_layers)


def postprocess_of(model: nn.Module) -> Callable[..., list[dict[str, Tensor]]]:
    """The function that turns ``model``'s outputs into detections: its own ``postprocess``
    when it declares one (sigmoid models: top-k over queries x classes, :func:`dino_postprocess`),
    else :func:`detr_postprocess` (softmax over classes and "no object")."""
    return getattr(unwrap_model(model), "postprocess", detr_postprocess)


def collate_for(model: nn.Module) -> DetrCollate | DenseCollate:
    """The collation ``model`` trains on: :class:`DenseCollate` for models whose targets are
    absolute ``xyxy`` boxes (``model.target_box_format == "xyxy"``: VFNet), else :class:`DetrCollate`."""
    if getattr(unwrap_model(model), "target_box_format", "cxcywh") == "xyxy":
        return DenseCollate()
    return DetrCollate(with_targets=reads_targets(model))


def reads_targets(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes the targets (in training: DINO's denoising queries)."""
    return "targets" in inspect.signature(unwrap_model(model).forward).parameters


def weights_metadata(config: DetectConfig, dataset: CocoDetection) -> dict[str, str]:
    """What a weights file needs to rebuild and use its model, as safetensors metadata (str -> str)."""
    return {
        "task": TASK,
        "model": config.model,
        "model_args": json.dumps(config.model_args),
        "classes": json.dumps([c["name"] for c in dataset.categories]),
        "category_ids": json.dumps(list(dataset.category_map.category_ids)),
        "imgsz": str(config.imgsz),
        "max_size": str(config.max_size),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
    }


@dataclass
class LoadedDetector:
    """A model rebuilt from a weights file, with what its metadata says about it."""

    model: nn.Module
    name: str
    classes: list[str]
    category_ids: list[int]
    imgsz: int
    max_size: int
    mean: list[float]
    std: list[float]


def load_detector(weights: str | Path, device: torch.device | str = "cpu") -> LoadedDetector:
    """Rebuild the model that wrote ``weights`` and load them.

    Raises:
        ValueError: the file was not written by ``sightkit train detect`` or does not fit
            the model its metadata names.
    """
    meta = read_metadata(weights)
    if meta.get("task") != TASK or "model" not in meta:
        raise ValueError(
            f"weights={str(weights)!r} were not written by `sightkit train detect` (their metadata: "
            f"task={meta.get('task')!r}, model={meta.get('model')!r})"
        )
    classes = json.loads(meta["classes"])
    model = build_model(meta["model"], len(classes), json.loads(meta.get("model_args", "{}")))
    load_weights(model, weights)
    return LoadedDetector(
        model=model.to(device).eval(),
        name=meta["model"],
        classes=classes,
        category_ids=json.loads(meta["category_ids"]),
        imgsz=int(meta["imgsz"]),
        max_size=int(meta["max_size"]),
        mean=json.loads(meta["mean"]),
        std=json.loads(meta["std"]),
    )


# --------------------------------------------------------------------------- evaluation


class CocoEvaluate:
    """The engine's ``evaluate(model, loader)`` for DETR: COCO box AP/AR on the loader's images.

    Every rank evaluates its shard; :class:`CocoEvaluator` gathers the detections of all ranks.
    """

    def __init__(self, annotations: str | Path, category_ids: Sequence[int], top_k: int = 100) -> None:
        self.annotations = annotations
        self.category_ids = list(category_ids)
        self.top_k = top_k
        self.last: CocoEvaluator | None = None

    @torch.no_grad()
    def __call__(self, model: nn.Module, loader: DataLoader, progress: Progress | None = None) -> dict[str, float]:
        evaluator = CocoEvaluator(self.annotations, "bbox", self.category_ids)
        device = next(model.parameters()).device
        task = progress.add_task("evaluating", total=len(loader)) if progress is not None else None
        postprocess = postprocess_of(model)
        for inputs, targets in loader:
            outputs = call_model(model, to_device(inputs, device))
            sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
            detections = postprocess(outputs["pred_logits"], outputs["pred_boxes"], sizes, top_k=self.top_k)
            evaluator.update(
                {t["image_id"]: {k: v.cpu() for k, v in d.items()} for t, d in zip(targets, detections, strict=True)}
            )
            if progress is not None and task is not None:
                progress.advance(task)
        self.last = evaluator
        return evaluator.compute()


# --------------------------------------------------------------------------- the four modes


@export("tasks.train_detect")
def train(config: DetectConfig) -> dict[str, float]:
    """Train a detector as ``config`` says; returns the last evaluation's metrics.

    Writes ``config.out``: ``config.yaml``, ``metrics.jsonl``, checkpoints, ``last.safetensors``
    and ``best.safetensors`` (with the metadata :func:`load_detector` reads) and ``curves.png``.
    """
    train_set, val_set = build_datasets(config)
    num_classes = len(train_set.categories)
    torch.manual_seed(config.seed)  # the Trainer seeds after the model exists: seed= fixes its initialisation too
    model = build_model(config.model, num_classes, config.model_args)
    criterion = build_criterion(model, num_classes, config)
    evaluate_fn = None
    if val_set is not None:
        evaluate_fn = CocoEvaluate(val_set.annotation_file, val_set.category_map.category_ids, config.top_k)
    elif config.best_metric == "AP":
        config.best_metric, config.best_mode = "val_loss", "min"
    trainer = Trainer(
        model,
        criterion,
        train_set,
        config,
        loss_weights=criterion.weight_dict,
        val_data=val_set,
        collate_fn=collate_for(model),
        evaluate=evaluate_fn,
        weights_metadata=weights_metadata(config, train_set),
    )
    return trainer.fit()


@export("tasks.evaluate_detect")
def evaluate(config: DetectEvalConfig, console: Console | None = None) -> dict[str, float]:
    """COCO box AP/AR of a weights file on a dataset split; writes ``metrics.json``,
    ``per_class_ap.json`` and ``pr_curve.png`` to ``config.out`` and prints the tables."""
    console = console or Console()
    device = resolve_device(config.device)
    detector = load_detector(config.weights, device)
    images, annotations = dataset_files(config.data, config.split)
    transforms = detection_transforms(
        "eval", size=detector.imgsz, max_size=detector.max_size, mean=detector.mean, std=detector.std
    )
    dataset = CocoDetection(images, annotations, transforms)
    if list(dataset.category_map.category_ids) != detector.category_ids:
        raise ValueError(
            f"the weights were trained on category ids {detector.category_ids}, but {annotations} has "
            f"{list(dataset.category_map.category_ids)}"
        )
    loader = DataLoader(
        dataset, batch_size=config.batch, num_workers=config.workers, collate_fn=collate_for(detector.model)
    )
    evaluate_fn = CocoEvaluate(annotations, detector.category_ids, config.top_k)
    with Progress(console=console, transient=True) as progress:
        metrics = evaluate_fn(detector.model, loader, progress)
    out = Path(config.out) if config.out else Path(config.weights).parent / f"eval_{config.split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    evaluator = evaluate_fn.last
    assert evaluator is not None  # set by the call above
    per_class = evaluator.per_class_ap()
    (out / "per_class_ap.json").write_text(json.dumps(per_class, indent=2))
    evaluator.plot_precision_recall(out / "pr_curve.png")
    table = Table(title=f"COCO box metrics, {len(dataset)} images of {annotations.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(evaluator.per_class_table())
    console.print(f"wrote {out / 'metrics.json'}, {out / 'per_class_ap.json'} and {out / 'pr_curve.png'}")
    return metrics


@export("tasks.predict_detect")
def predict(config: DetectPredictConfig, console: Console | None = None) -> list[dict[str, Any]]:
    """Detect objects in an image or a folder of images; draws each picture with its boxes,
    labels and scores into ``config.out`` and writes ``detections.json`` (boxes ``xyxy`` in
    pixels of the original image)."""
    from sightkit.tasks.draw import draw_detections

    console = console or Console()
    device = resolve_device(config.device)
    detector = load_detector(config.weights, device)
    paths = image_paths(config.source)
    transforms = detection_transforms(
        "eval", size=detector.imgsz, max_size=detector.max_size, mean=detector.mean, std=detector.std
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    postprocess = postprocess_of(detector.model)
    with Progress(console=console, transient=True) as progress, torch.no_grad():
        task = progress.add_task("predicting", total=len(paths))
        for path in paths:
            image = read_image(path)
            height, width = image.shape[-2:]
            tensor = transforms(image).as_subclass(Tensor)[None].to(device)
            outputs = detector.model(tensor)
            sizes = torch.tensor([[height, width]], device=device)
            (found,) = postprocess(outputs["pred_logits"], outputs["pred_boxes"], sizes, top_k=config.top_k)
            keep = found["scores"] >= config.conf
            found = {k: v[keep].cpu() for k, v in found.items()}
            names = [detector.classes[i] for i in found["labels"].tolist()]
            picture = out / f"{path.stem}.jpg"
            draw_detections(image, found["boxes"], names, found["scores"], picture)
            records.append(
                {
                    "image": str(path),
                    "picture": str(picture),
                    "detections": [
                        {"label": name, "category_id": detector.category_ids[label], "score": score, "box": box}
                        for name, label, score, box in zip(
                            names,
                            found["labels"].tolist(),
                            [round(s, 4) for s in found["scores"].tolist()],
                            [[round(c, 2) for c in b] for b in found["boxes"].tolist()],
                            strict=True,
                        )
                    ],
                }
            )
            progress.advance(task)
    (out / "detections.json").write_text(json.dumps(records, indent=2))
    total = sum(len(r["detections"]) for r in records)
    console.print(f"{total} detections in {len(paths)} images; pictures and detections.json in [bold]{out}[/]")
    return records


def export_spec(weights: str | Path, imgsz: int = 0) -> ExportSpec:
    """What ``sightkit export onnx`` needs for detection weights: the model reduced to its final
    outputs, example inputs ``images`` [1,3,S,S] (normalised) and ``mask`` [1,S,S], and the
    dynamic axes (batch, height, width). Deformable convolutions (VFNet) need ONNX opset 19."""
    detector = load_detector(weights)
    side = imgsz or detector.imgsz
    batch, height, width = torch.export.Dim("batch", max=64), torch.export.Dim("height"), torch.export.Dim("width")
    return ExportSpec(
        module=OnnxDetr(detector.model),
        name=detector.name,
        inputs={"images": torch.randn(1, 3, side, side), "mask": torch.zeros(1, side, side, dtype=torch.bool)},
        output_names=["pred_logits", "pred_boxes"],
        dynamic_shapes={"images": {0: batch, 2: height, 3: width}, "mask": {0: batch, 1: height, 2: width}},
        min_opset=19 if any(isinstance(m, DeformConv2d) for m in detector.model.modules()) else 18,
    )


class OnnxDetr(nn.Module):
    """A DETR-family detector with only the final outputs (``pred_logits``, ``pred_boxes``), for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self.model(images, mask)
        return outputs["pred_logits"], outputs["pred_boxes"]
