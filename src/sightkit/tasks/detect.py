"""Object detection: DETR-family models (DETR, DINO, VFNet) on COCO-format data, trained by the engine.

One place builds everything a detection run needs from a typed config: the datasets and
transforms (:mod:`sightkit.data`), the model (:func:`sightkit.models.create_model`), its
criterion and loss weights, the COCO evaluator. :class:`DetectTask` declares them to the task
registry; the runner (:mod:`sightkit.tasks.runner`) trains, evaluates and predicts, and
:class:`DetectPredictor` is what :func:`sightkit.load` returns for detection weights.

Every detector family declares on its class what training and inference need (nothing is
probed here): ``build_criterion(**overrides)``, ``postprocess(pred_logits, pred_boxes, sizes,
top_k)``, ``target_box_format`` (``cxcywh`` normalised for DETR and DINO, absolute ``xyxy``
for VFNet), ``reads_targets`` (DINO's denoising queries) and ``no_object_class`` (DETR's
``eos_coef``).

A dataset is a folder in the layout that ``sightkit data synth`` writes (and that COCO uses)::

    DATA/images/...                 images, file_name in the JSON is relative to this folder
    DATA/annotations/train.json     COCO detection JSON
    DATA/annotations/val.json

Weights files (``.safetensors``) carry what is needed to rebuild and use the model in
their metadata: the task, the model name and overrides, the class names and category ids,
the input size and the normalisation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from rich.console import Console
from rich.progress import Progress
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.ops import DeformConv2d

from sightkit._api import export
from sightkit.config import EvalConfig, PredictConfig, setting, with_defaults
from sightkit.data.coco import CocoDetection
from sightkit.data.collate import collate_detection
from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, detection_transforms
from sightkit.engine.checkpoint import load_weights
from sightkit.engine.data import call_model, to_device
from sightkit.engine.distributed import unwrap_model
from sightkit.eval.coco import CocoEvaluator
from sightkit.ops.boxes import box_convert
from sightkit.predictor import Predictor, frame_results, image_tensor, pad_images
from sightkit.results import Results
from sightkit.tasks import runner
from sightkit.tasks.common import TaskConfig, build_model, dataset_files
from sightkit.tasks.export import ExportSpec, example_input
from sightkit.tasks.registry import EvalPlan, Task, TrainingParts, register_task

TASK = "detect"


@export("tasks.DetectConfig")
@dataclass
@with_defaults(
    model="detr_r18_tiny", data="runs/data/shapes", out="runs/detect/train", epochs=50, batch=8,
    backbone_lr_mult=0.1, clip_grad_norm=0.1, best_metric="AP", best_mode="max",
)  # fmt: skip
class DetectConfig(TaskConfig):
    """Settings of ``sightkit train detect``: the engine's keys plus the detection ones, with
    DETR's recipe as defaults (AdamW lr 1e-4, backbone lr x0.1, weight decay 1e-4, gradient
    clipping at norm 0.1)."""

    model_args: dict[str, Any] = setting(  # noqa: RUF009  (a default_factory: each config gets its own dict)
        help="builder overrides, e.g. '{cls_loss: focal, refine: false}' (VFNet)", factory=dict
    )
    imgsz: int = setting(320, "shorter image side (the train recipe scales around it)")
    max_size: int = setting(512, "longest image side")
    eos_coef: float = setting(0.1, "weight of the 'no object' class in DETR's cross-entropy (softmax models)")
    top_k: int = setting(100, "detections kept per image at evaluation")


@export("tasks.DetectEvalConfig")
@dataclass
@with_defaults(data="runs/data/shapes")
class DetectEvalConfig(EvalConfig):
    """Settings of ``sightkit eval detect``."""

    top_k: int = setting(100, "detections kept per image")


@export("tasks.DetectPredictConfig")
@dataclass
@with_defaults(out="runs/detect/predict")
class DetectPredictConfig(PredictConfig):
    """Settings of ``sightkit predict detect``."""

    top_k: int = setting(100, "detections kept per image")


# --------------------------------------------------------------------------- data


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

    def dataset(split: str, mode: str) -> CocoDetection:
        images, annotations = dataset_files(config.data, split)
        transforms = detection_transforms(mode, size=config.imgsz, max_size=config.max_size, **normalise)
        return CocoDetection(images, annotations, transforms, max_pixels=config.max_pixels)

    train = dataset(config.train_split, "train")
    val = dataset(config.val_split, "eval") if config.val_split else None
    if val is not None and val.category_map.category_ids != train.category_map.category_ids:
        raise ValueError(
            f"{val.annotation_file} and {train.annotation_file} have different categories "
            f"({val.category_map.category_ids} vs {train.category_map.category_ids})"
        )
    return train, val


def collate_for(model: nn.Module) -> DetrCollate | DenseCollate:
    """The collation ``model`` trains on, as its class declares: :class:`DenseCollate` for absolute
    ``xyxy`` targets (VFNet), else :class:`DetrCollate` (with the targets among the inputs for
    models that read them: DINO)."""
    model = unwrap_model(model)
    if model.target_box_format == "xyxy":
        return DenseCollate()
    return DetrCollate(with_targets=model.reads_targets)


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
        postprocess = unwrap_model(model).postprocess
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


# --------------------------------------------------------------------------- the predictor


@export("tasks.DetectPredictor")
class DetectPredictor(Predictor):
    """Detection weights, called on images: ``Results`` with ``boxes`` (``xyxy`` pixels of the
    original image), ``scores``, ``labels``, ``names`` and ``category_ids``.

    Options: ``conf`` (keep detections scoring at least this, default 0.5) and ``top_k`` (most
    detections per image, 100). Images are resized as in evaluation (shorter side ``imgsz``,
    longer at most ``max_size``), padded to a multiple of 32 with a padding mask (None when no
    image of the batch needed padding).
    """

    task = TASK
    options: ClassVar[dict[str, Any]] = {"conf": 0.5, "top_k": 100}

    def __init__(self, model: nn.Module, metadata: dict[str, str], device: Any = None) -> None:
        super().__init__(model, metadata, device)
        self.names = self.classes = json.loads(metadata["classes"])
        self.category_ids: list[int] = json.loads(metadata["category_ids"])
        self.imgsz, self.max_size = int(metadata["imgsz"]), int(metadata["max_size"])
        self.mean, self.std = json.loads(metadata["mean"]), json.loads(metadata["std"])
        self.transforms = detection_transforms(
            "eval", size=self.imgsz, max_size=self.max_size, mean=self.mean, std=self.std
        )

    def preprocess(self, frames: Sequence[Any], settings: dict[str, Any]) -> dict[str, Tensor | None]:
        images = [self.transforms(tv_tensors.Image(image_tensor(f))).as_subclass(Tensor) for f in frames]
        batch, mask = pad_images(images)
        sizes = torch.tensor([f.image.shape[:2] for f in frames])
        # Without padding (frames of one size, a multiple of 32 once resized) the models skip their
        # masking: DINO zeroes padded values in every attention layer and encodes each image's
        # positions apart.
        mask = mask.to(self.device) if mask.any() else None
        return {"images": batch.to(self.device), "mask": mask, "sizes": sizes.to(self.device)}

    def forward(self, inputs: dict[str, Tensor | None]) -> dict[str, Tensor]:
        return self.model(inputs["images"], inputs["mask"])

    def postprocess(
        self, outputs: dict[str, Tensor], inputs: dict[str, Tensor], frames: Sequence[Any], settings: dict[str, Any]
    ) -> list[Results]:
        found = self.model.postprocess(
            outputs["pred_logits"], outputs["pred_boxes"], inputs["sizes"], top_k=settings["top_k"]
        )
        results = []
        for frame, detections in zip(frames, found, strict=True):
            keep = detections["scores"] >= settings["conf"]
            picked = {key: value[keep] for key, value in detections.items()}
            results.append(frame_results(frame, TASK, self.names, category_ids=self.category_ids, **picked))
        return results


# --------------------------------------------------------------------------- the task


class DetectTask(Task):
    """Object detection (``sightkit train|eval|predict detect``)."""

    name = TASK
    summary = "boxes and classes of objects (DETR, DINO, VFNet)"
    train_config, eval_config, predict_config = DetectConfig, DetectEvalConfig, DetectPredictConfig

    def training_parts(self, config: DetectConfig) -> TrainingParts:
        train_set, val_set = build_datasets(config)
        num_classes = len(train_set.categories)
        model = build_model(TASK, config.model, num_classes=num_classes, **config.model_args)
        criterion = model.build_criterion(**({"eos_coef": config.eos_coef} if model.no_object_class else {}))
        evaluate = None
        if val_set is not None:
            evaluate = CocoEvaluate(val_set.annotation_file, val_set.category_map.category_ids, config.top_k)
        return TrainingParts(
            model, criterion, train_set, val_set, collate_for(model), evaluate,
            weights_metadata(config, train_set), loss_weights=criterion.weight_dict,
        )  # fmt: skip

    def load(self, weights: str | Path, metadata: dict[str, str], device: Any) -> DetectPredictor:
        classes = json.loads(metadata["classes"])
        overrides = json.loads(metadata.get("model_args", "{}"))
        model = build_model(TASK, metadata["model"], num_classes=len(classes), **overrides)
        return DetectPredictor(load_weights(model, weights), metadata, device)

    def eval_plan(self, config: DetectEvalConfig, predictor: DetectPredictor) -> EvalPlan:
        images, annotations = dataset_files(config.data, config.split)
        dataset = CocoDetection(images, annotations, predictor.transforms)
        if list(dataset.category_map.category_ids) != predictor.category_ids:
            raise ValueError(
                f"the weights were trained on category ids {predictor.category_ids}, but {annotations} has "
                f"{list(dataset.category_map.category_ids)}"
            )
        evaluate = CocoEvaluate(annotations, predictor.category_ids, config.top_k)

        def report(out: Path, console: Console) -> list[str]:
            evaluator = evaluate.last
            (out / "per_class_ap.json").write_text(json.dumps(evaluator.per_class_ap(), indent=2))
            evaluator.plot_precision_recall(out / "pr_curve.png")
            console.print(evaluator.per_class_table())
            return ["per_class_ap.json", "pr_curve.png"]

        title = f"COCO box metrics, {len(dataset)} images of {annotations.name}"
        return EvalPlan(dataset, collate_for(predictor.model), evaluate, title, report, f"eval_{config.split}")

    def predict_options(self, config: DetectPredictConfig) -> dict[str, Any]:
        return {"top_k": config.top_k}

    def export_spec(self, predictor: DetectPredictor, imgsz: int = 0) -> ExportSpec:
        """The model with its family's postprocess inside (:class:`~sightkit.models.DeployDetector`,
        the predictor's ``top_k`` detections per image): ``images`` [B, 3, H, W] (normalised, any
        batch and size; padded inside to a multiple of 32 with the mask) -> ``boxes`` [B, K, 4]
        ``xyxy`` in the input's pixels, ``scores`` [B, K], ``labels`` [B, K] (-1: an empty slot).
        Deformable convolutions (VFNet) need ONNX opset 19."""
        from sightkit.models.deploy import DeployDetector
        from sightkit.ops.multiclass_nms import ONNX_TRANSLATIONS

        side = imgsz or predictor.imgsz
        module = DeployDetector.for_model(predictor.model, top_k=predictor.options["top_k"])
        # Dim.DYNAMIC rather than named Dims: the padding's size arithmetic defeats the named Dims' solver.
        dynamic = torch.export.Dim.DYNAMIC
        return ExportSpec(
            module=module,
            name=predictor.name,
            inputs={"images": example_input(2, 3, side, side)},  # 2: a batch of 1 would be specialised
            output_names=["boxes", "scores", "labels"],
            dynamic_shapes={"images": {0: dynamic, 2: dynamic, 3: dynamic}},
            min_opset=19 if any(isinstance(m, DeformConv2d) for m in predictor.model.modules()) else 18,
            metadata={
                "postprocess": module.kind,
                "top_k": str(module.top_k),
                "size_divisible": str(module.size_divisible),
                "input": "images [B, 3, H, W] float RGB (pixels / 255 - mean) / std, resized: shorter side imgsz, "
                "longer at most max_size",
            },
            translations=ONNX_TRANSLATIONS,
        )

    def onnx_predictor(self, model: nn.Module, metadata: dict[str, str], device: Any) -> DetectPredictor:
        from sightkit.tasks.onnx_predictor import OnnxDetectPredictor

        return OnnxDetectPredictor(model, metadata, device)


DETECT = register_task(DetectTask())


#: This task's modes (``sightkit.tasks.detect.train(config)``): the runner's, which read the task from the config;
#: and ``sightkit.load`` for its weights only.
train, evaluate, predict, load_detector = runner.train, runner.evaluate, runner.predict, DETECT.load_weights
