"""Face detection with 5 landmarks: train :class:`~sightkit.models.FaceDetector` on COCO-format
face scenes (``sightkit data synth faces`` writes them), evaluate its box AP, predict, export.

``sightkit train|eval|predict face_detect key=value ...``. The weights file's metadata names
the task ``face`` with ``kind=detector``, so that ``sightkit export onnx`` and the face
commands (``sightkit face identify IMAGE detector=WEIGHTS``) recognise it.

Data layout (as :mod:`sightkit.tasks.detect`)::

    DATA/images/...                 scenes
    DATA/annotations/train.json     COCO JSON, category "face" with the 5 landmarks as keypoints
    DATA/annotations/val.json
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from sightkit._api import export
from sightkit.data.coco import CocoKeypoints, read_image
from sightkit.data.collate import collate_detection
from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, detection_transforms
from sightkit.engine.checkpoint import load_weights
from sightkit.engine.trainer import TrainConfig, Trainer
from sightkit.eval.coco import CocoEvaluator
from sightkit.losses.face_detection import FaceDetectionCriterion
from sightkit.models.face_detector import FaceDetector, face_detector_postprocess
from sightkit.models.registry import create_model, list_models
from sightkit.tasks.common import image_paths, read_metadata, resolve_device
from sightkit.tasks.detect import dataset_files
from sightkit.tasks.export import ExportSpec

TASK, KIND = "face", "detector"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@export("tasks.FaceDetectConfig")
@dataclass
class FaceDetectConfig(TrainConfig):
    """Settings of ``sightkit train face_detect``: the engine's keys plus the detector's."""

    model: str = field(default="face_detector_r18", metadata=_help("face_detector_r18 or face_detector_tiny"))
    data: str = field(default="runs/data/faces", metadata=_help("dataset folder: images/, annotations/*.json"))
    train_split: str = field(default="train", metadata=_help("annotations/<train_split>.json for training"))
    val_split: str = field(default="val", metadata=_help("annotations/<val_split>.json for evaluation ('' : none)"))
    imgsz: int = field(default=320, metadata=_help("shorter image side (the train recipe scales around it)"))
    max_size: int = field(default=512, metadata=_help("longest image side"))
    score_threshold: float = field(default=0.05, metadata=_help("lowest score kept at evaluation"))
    out: str = field(default="runs/face_detect/train", metadata=_help("run folder (checkpoints, metrics, plots)"))
    epochs: int = field(default=30, metadata=_help("passes over the training data (0: steps decides)"))
    batch: int = field(default=8, metadata=_help("global batch of one optimiser step, all processes together"))
    lr: float = field(default=1e-3, metadata=_help("base learning rate (AdamW)"))
    best_metric: str = field(default="AP", metadata=_help("metric that picks best.pt"))
    best_mode: str = field(default="max", metadata=_help("max or min: which way best_metric improves"))


@export("tasks.FaceDetectEvalConfig")
@dataclass
class FaceDetectEvalConfig:
    """Settings of ``sightkit eval face_detect``."""

    weights: str = field(default="", metadata=_help("a .safetensors file written by sightkit train face_detect"))
    data: str = field(default="runs/data/faces", metadata=_help("dataset folder: images/, annotations/*.json"))
    split: str = field(default="val", metadata=_help("annotations/<split>.json to evaluate"))
    out: str = field(default="", metadata=_help("folder for metrics.json ('' : next to weights)"))
    batch: int = field(default=8, metadata=_help("images per forward pass"))
    score_threshold: float = field(default=0.05, metadata=_help("lowest score kept"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))
    workers: int = field(default=0, metadata=_help("DataLoader worker processes"))


@export("tasks.FaceDetectPredictConfig")
@dataclass
class FaceDetectPredictConfig:
    """Settings of ``sightkit predict face_detect``."""

    weights: str = field(default="", metadata=_help("a .safetensors file written by sightkit train face_detect"))
    source: str = field(default="", metadata=_help("an image or a folder of images"))
    out: str = field(default="runs/face_detect/predict", metadata=_help("folder for pictures and faces.json"))
    conf: float = field(default=0.5, metadata=_help("keep faces scoring at least this"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))


class FaceCollate:
    """Pad face-scene samples into ``({"images": [B, 3, H, W]}, targets)``; each target holds
    ``boxes`` ``[T, 4]`` and ``landmarks`` ``[T, 5, 2]`` in the resized image's pixels,
    ``visibility`` ``[T, 5]``, ``image_id``, ``orig_size`` and ``size`` (``(h, w)`` before and
    after resizing). A class so that DataLoader workers can pickle it."""

    def __call__(self, samples: Sequence[Any]) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
        batch = collate_detection(samples, size_divisible=32)
        targets = []
        for target, size in zip(batch.targets, batch.image_sizes, strict=True):
            targets.append(
                {
                    "boxes": target["boxes"].as_subclass(Tensor).float(),
                    "landmarks": target["keypoints"].as_subclass(Tensor).float(),
                    "visibility": target["keypoints_visibility"],
                    "image_id": int(target["image_id"]),
                    "orig_size": target["orig_size"],
                    "size": size,
                }
            )
        return {"images": batch.images}, targets


def _scale(targets: Sequence[dict[str, Any]], device: torch.device) -> Tensor:
    """``[B, 2]`` (sx, sy) from resized to original pixels."""
    return torch.stack([t["orig_size"].flip(0).float() / t["size"].flip(0).float() for t in targets]).to(device)


class FaceBoxAP:
    """The engine's ``evaluate(model, loader)``: COCO box AP of the faces (every rank its shard)."""

    def __init__(self, annotations: str | Path, category_ids: Sequence[int], score_threshold: float) -> None:
        self.annotations, self.category_ids, self.score_threshold = annotations, list(category_ids), score_threshold

    @torch.no_grad()
    def __call__(self, model: nn.Module, loader: DataLoader, progress: Progress | None = None) -> dict[str, float]:
        evaluator = CocoEvaluator(self.annotations, "bbox", self.category_ids)
        device = next(model.parameters()).device
        task = progress.add_task("evaluating", total=len(loader)) if progress is not None else None
        for inputs, targets in loader:
            outputs = model(inputs["images"].to(device))
            found = face_detector_postprocess(outputs, self.score_threshold, scale=_scale(targets, device))
            evaluator.update(
                {
                    t["image_id"]: {
                        "boxes": f["boxes"].cpu(),
                        "scores": f["scores"].cpu(),
                        "labels": torch.zeros(len(f["scores"]), dtype=torch.long),
                    }
                    for t, f in zip(targets, found, strict=True)
                }
            )
            if progress is not None and task is not None:
                progress.advance(task)
        return evaluator.compute()


def _build_model(name: str) -> FaceDetector:
    if name not in list_models() or not name.startswith("face_detector"):
        choices = [n for n in list_models() if n.startswith("face_detector")]
        raise ValueError(f"model={name!r} is not a face detector; choose one of {', '.join(choices)}")
    return create_model(name)


@export("tasks.train_face_detect")
def train(config: FaceDetectConfig) -> dict[str, float]:
    """Train a face detector as ``config`` says; returns the last evaluation's metrics."""
    normalise = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    images, annotations = dataset_files(config.data, config.train_split)
    probe = CocoKeypoints(images, annotations)
    sizes = {"size": config.imgsz, "max_size": config.max_size}
    train_set = CocoKeypoints(
        images, annotations, detection_transforms("train", flip_pairs=probe.flip_pairs, **sizes, **normalise)
    )
    val_set, evaluate_fn = None, None
    if config.val_split:
        val_images, val_annotations = dataset_files(config.data, config.val_split)
        val_set = CocoKeypoints(val_images, val_annotations, detection_transforms("eval", **sizes, **normalise))
        evaluate_fn = FaceBoxAP(val_annotations, val_set.category_map.category_ids, config.score_threshold)
    elif config.best_metric == "AP":
        config.best_metric, config.best_mode = "val_loss", "min"
    torch.manual_seed(config.seed)  # the Trainer seeds after the model exists: seed= fixes its initialisation too
    model = _build_model(config.model)
    criterion = FaceDetectionCriterion(model.stride)
    metadata = {
        "task": TASK,
        "kind": KIND,
        "model": config.model,
        "imgsz": str(config.imgsz),
        "max_size": str(config.max_size),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
    }
    trainer = Trainer(
        model,
        criterion,
        train_set,
        config,
        loss_weights=criterion.weight_dict,
        val_data=val_set,
        collate_fn=FaceCollate(),
        evaluate=evaluate_fn,
        weights_metadata=metadata,
    )
    return trainer.fit()


@export("tasks.TrainedFaceDetector")
class TrainedFaceDetector:
    """A trained :class:`~sightkit.models.FaceDetector` with its input transform: ``detect(images)``
    like :meth:`sightkit.models.MTCNN.detect` (uint8 or 0-255 float ``[B, 3, H, W]`` -> per image
    boxes, scores and landmarks in its pixels)."""

    def __init__(self, weights: str | Path, device: torch.device | str = "cpu", score_threshold: float = 0.5) -> None:
        meta = read_metadata(weights)
        if meta.get("task") != TASK or meta.get("kind") != KIND:
            raise ValueError(
                f"weights={str(weights)!r} were not written by `sightkit train face_detect` (their metadata: "
                f"task={meta.get('task')!r}, kind={meta.get('kind')!r})"
            )
        self.name, self.score_threshold = meta["model"], score_threshold
        self.model = load_weights(_build_model(meta["model"]), weights).to(device).eval()
        self.transform = detection_transforms(
            "eval", size=int(meta["imgsz"]), max_size=int(meta["max_size"]),
            mean=json.loads(meta["mean"]), std=json.loads(meta["std"]),
        )  # fmt: skip
        self.device = torch.device(device)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        results = []
        for image in images:
            pixels = self.transform(tv_tensors.Image(image.to(torch.uint8).cpu())).as_subclass(Tensor)
            height, width = pixels.shape[-2:]
            padded = pixels.new_zeros(3, -(-height // 32) * 32, -(-width // 32) * 32)
            padded[:, :height, :width] = pixels
            scale = torch.tensor([[image.shape[-1] / width, image.shape[-2] / height]], device=self.device)
            outputs = self.model(padded[None].to(self.device))
            results += face_detector_postprocess(outputs, self.score_threshold, scale=scale)
        return results


@export("tasks.evaluate_face_detect")
def evaluate(config: FaceDetectEvalConfig, console: Console | None = None) -> dict[str, float]:
    """COCO box AP of face detector weights on a split; writes ``metrics.json`` and prints the table."""
    console = console or Console()
    detector = TrainedFaceDetector(config.weights, resolve_device(config.device))
    images, annotations = dataset_files(config.data, config.split)
    dataset = CocoKeypoints(images, annotations, detector.transform)
    loader = DataLoader(dataset, batch_size=config.batch, num_workers=config.workers, collate_fn=FaceCollate())
    with Progress(console=console, transient=True) as progress:
        metrics = FaceBoxAP(annotations, dataset.category_map.category_ids, config.score_threshold)(
            detector.model, loader, progress
        )
    out = Path(config.out) if config.out else Path(config.weights).parent / f"eval_{config.split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    table = Table(title=f"face boxes, {len(dataset)} images of {annotations.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(f"wrote {out / 'metrics.json'}")
    return metrics


@export("tasks.predict_face_detect")
def predict(config: FaceDetectPredictConfig, console: Console | None = None) -> list[dict[str, Any]]:
    """Find faces and landmarks in an image or a folder; draws them into ``config.out`` and
    writes ``faces.json`` (boxes ``xyxy`` and landmarks in pixels of the original image)."""
    from sightkit.tasks.draw_faces import draw_faces

    console = console or Console()
    detector = TrainedFaceDetector(config.weights, resolve_device(config.device), config.conf)
    out = Path(config.out)
    records = []
    for path in image_paths(config.source):
        image = read_image(path).as_subclass(Tensor)
        (found,) = detector.detect(image[None])
        found = {k: v.cpu() for k, v in found.items()}
        labels = [f"face {s:.2f}" for s in found["scores"].tolist()]
        picture = out / f"{path.stem}.jpg"
        draw_faces(image, found["boxes"], found["landmarks"], labels, [True] * len(labels), picture)
        faces = [
            {"score": round(s, 4), "box": [round(v, 2) for v in b], "landmarks": [[round(v, 2) for v in p] for p in m]}
            for s, b, m in zip(
                found["scores"].tolist(), found["boxes"].tolist(), found["landmarks"].tolist(), strict=True
            )
        ]
        records.append({"image": str(path), "picture": str(picture), "faces": faces})
    out.mkdir(parents=True, exist_ok=True)
    (out / "faces.json").write_text(json.dumps(records, indent=2))
    console.print(f"{sum(len(r['faces']) for r in records)} faces in {len(records)} images; pictures in [bold]{out}[/]")
    return records


class OnnxFaceDetector(nn.Module):
    """The detector's raw outputs as a tuple (``logits``, ``boxes``, ``landmarks``), for export."""

    def __init__(self, model: FaceDetector) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.model(images)
        return outputs["logits"], outputs["boxes"], outputs["landmarks"]


def export_spec(weights: str | Path, imgsz: int = 0) -> ExportSpec:
    """``sightkit export onnx`` for face detector weights: ``images`` [B, 3, S, S] normalised,
    dynamic batch."""
    detector = TrainedFaceDetector(weights)
    side = imgsz or int(read_metadata(weights)["imgsz"])
    side = -(-side // 32) * 32
    return ExportSpec(
        module=OnnxFaceDetector(detector.model),
        name=detector.name,
        inputs={"images": torch.randn(2, 3, side, side)},  # 2: a batch of 1 would be specialised
        output_names=["logits", "boxes", "landmarks"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch", max=64)}},
    )
