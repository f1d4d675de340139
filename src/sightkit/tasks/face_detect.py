"""Face detection with 5 landmarks: train :class:`~sightkit.models.FaceDetector` on COCO-format
face scenes (``sightkit data synth faces`` writes them), evaluate its box AP, predict, export.

``sightkit train|eval|predict face_detect key=value ...``. The weights file's metadata names
the task ``face_detect`` (files written before it had its own name say ``face`` with
``kind=detector``; :func:`sightkit.load` reads both). :class:`FaceDetectPredictor` is what
:func:`sightkit.load` returns for them, and what the face commands use
(``sightkit face identify IMAGE detector=WEIGHTS``).

Data layout (as :mod:`sightkit.tasks.detect`)::

    DATA/images/...                 scenes
    DATA/annotations/train.json     COCO JSON, category "face" with the 5 landmarks as keypoints
    DATA/annotations/val.json
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from rich.progress import Progress
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from sightkit._api import export
from sightkit.config import EvalConfig, PredictConfig, setting, with_defaults
from sightkit.data.coco import CocoKeypoints
from sightkit.data.collate import collate_detection
from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, detection_transforms
from sightkit.engine.checkpoint import load_weights
from sightkit.eval.coco import CocoEvaluator
from sightkit.losses.face_detection import FaceDetectionCriterion
from sightkit.models.face_detector import FaceDetector, face_detector_postprocess
from sightkit.ops.head_pose import head_pose
from sightkit.predictor import Predictor, frame_results, image_tensor, pad_images
from sightkit.results import Results
from sightkit.tasks import runner
from sightkit.tasks.common import TaskConfig, build_model, dataset_files
from sightkit.tasks.export import ExportSpec, example_input
from sightkit.tasks.registry import EvalPlan, Task, TrainingParts, register_task

TASK = "face_detect"


@export("tasks.FaceDetectConfig")
@dataclass
@with_defaults(
    model="face_detector_r18", data="runs/data/faces", out="runs/face_detect/train", epochs=30, batch=8, lr=1e-3,
    best_metric="AP", best_mode="max",
)  # fmt: skip
class FaceDetectConfig(TaskConfig):
    """Settings of ``sightkit train face_detect``: the engine's keys plus the detector's."""

    imgsz: int = setting(320, "shorter image side (the train recipe scales around it)")
    max_size: int = setting(512, "longest image side")
    score_threshold: float = setting(0.05, "lowest score kept at evaluation")


@export("tasks.FaceDetectEvalConfig")
@dataclass
@with_defaults(data="runs/data/faces")
class FaceDetectEvalConfig(EvalConfig):
    """Settings of ``sightkit eval face_detect``."""

    score_threshold: float = setting(0.05, "lowest score kept")


@export("tasks.FaceDetectPredictConfig")
@dataclass
@with_defaults(out="runs/face_detect/predict")
class FaceDetectPredictConfig(PredictConfig):
    """Settings of ``sightkit predict face_detect``."""


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
            sizes = torch.stack([t["orig_size"] for t in targets])
            found = face_detector_postprocess(
                outputs, self.score_threshold, scale=_scale(targets, device), image_sizes=sizes
            )
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


@export("tasks.FaceDetectPredictor")
class FaceDetectPredictor(Predictor):
    """Face detector weights, called on images: ``Results`` with ``boxes`` (``xyxy`` pixels of
    the original image), ``scores``, ``landmarks`` ``[N, 5, 2]``, ``head_pose`` ``[N, 3]`` (yaw,
    pitch, roll in radians from the landmarks, :func:`sightkit.ops.head_pose`) and ``labels`` (0, "face").

    Option ``conf``: the lowest face score kept (default 0.5).
    """

    task = TASK
    options: ClassVar[dict[str, Any]] = {"conf": 0.5}

    def __init__(self, model: nn.Module, metadata: dict[str, str], device: Any = None) -> None:
        super().__init__(model, metadata, device)
        self.names = ["face"]
        self.imgsz, self.max_size = int(metadata["imgsz"]), int(metadata["max_size"])
        self.transform = detection_transforms(
            "eval", size=self.imgsz, max_size=self.max_size,
            mean=json.loads(metadata["mean"]), std=json.loads(metadata["std"]),
        )  # fmt: skip

    def preprocess(self, frames: Sequence[Any], settings: dict[str, Any]) -> dict[str, Tensor]:
        images = [self.transform(tv_tensors.Image(image_tensor(f))).as_subclass(Tensor) for f in frames]
        batch, _ = pad_images(images)
        # (sx, sy) from the resized image back to the original's pixels.
        scale = torch.tensor(
            [
                [f.image.shape[1] / i.shape[-1], f.image.shape[0] / i.shape[-2]]
                for f, i in zip(frames, images, strict=True)
            ]
        )
        return {"images": batch.to(self.device), "scale": scale.to(self.device)}

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.model(inputs["images"])

    def postprocess(
        self, outputs: dict[str, Tensor], inputs: dict[str, Tensor], frames: Sequence[Any], settings: dict[str, Any]
    ) -> list[Results]:
        sizes = torch.tensor([frame.image.shape[:2] for frame in frames])
        found = face_detector_postprocess(outputs, settings["conf"], scale=inputs["scale"], image_sizes=sizes)
        return [
            frame_results(
                frame,
                TASK,
                self.names,
                boxes=f["boxes"],
                scores=f["scores"],
                landmarks=f["landmarks"],
                head_pose=head_pose(f["landmarks"].float()),
                labels=torch.zeros(len(f["scores"]), dtype=torch.long),
            )
            for frame, f in zip(frames, found, strict=True)
        ]

    def detect(self, images: Tensor, score_threshold: float | None = None) -> list[dict[str, Tensor]]:
        """Faces of uint8 (or 0-255 float) images ``[B, 3, H, W]`` like :meth:`sightkit.models.MTCNN.detect`:
        per image ``boxes`` ``[K, 4]``, ``scores`` ``[K]``, ``landmarks`` ``[K, 5, 2]`` in its pixels and
        ``head_pose`` ``[K, 3]``."""
        results = self(images.to(torch.uint8).cpu(), conf=score_threshold, progress=False)
        return [
            {
                "boxes": torch.from_numpy(r.boxes),
                "scores": torch.from_numpy(r.scores),
                "landmarks": torch.from_numpy(r.landmarks),
                "head_pose": torch.from_numpy(r.head_pose),
            }
            for r in results
        ]


class OnnxFaceDetector(nn.Module):
    """The detector's raw outputs as a tuple (``logits``, ``boxes``, ``landmarks``), for export."""

    def __init__(self, model: FaceDetector) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.model(images)
        return outputs["logits"], outputs["boxes"], outputs["landmarks"]


# --------------------------------------------------------------------------- the task


class FaceDetectTask(Task):
    """Face detection with 5 landmarks (``sightkit train|eval|predict face_detect``)."""

    name = TASK
    summary = "face boxes and 5 landmarks (RetinaFace-style detector)"
    train_config, eval_config, predict_config = FaceDetectConfig, FaceDetectEvalConfig, FaceDetectPredictConfig

    def training_parts(self, config: FaceDetectConfig) -> TrainingParts:
        normalise = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        images, annotations = dataset_files(config.data, config.train_split)
        probe = CocoKeypoints(images, annotations)
        sizes = {"size": config.imgsz, "max_size": config.max_size}
        train_transforms = detection_transforms("train", flip_pairs=probe.flip_pairs, **sizes, **normalise)
        train_set = CocoKeypoints(images, annotations, train_transforms, max_pixels=config.max_pixels)
        val_set, evaluate = None, None
        if config.val_split:
            val_images, val_annotations = dataset_files(config.data, config.val_split)
            val_transforms = detection_transforms("eval", **sizes, **normalise)
            val_set = CocoKeypoints(val_images, val_annotations, val_transforms, max_pixels=config.max_pixels)
            evaluate = FaceBoxAP(val_annotations, val_set.category_map.category_ids, config.score_threshold)
        model = build_model(TASK, config.model)
        criterion = FaceDetectionCriterion(model.stride)
        metadata = {
            "model": config.model,
            "imgsz": str(config.imgsz),
            "max_size": str(config.max_size),
            "mean": json.dumps(list(IMAGENET_MEAN)),
            "std": json.dumps(list(IMAGENET_STD)),
        }
        return TrainingParts(
            model, criterion, train_set, val_set, FaceCollate(), evaluate, metadata, loss_weights=criterion.weight_dict
        )

    def load(self, weights: str | Path, metadata: dict[str, str], device: Any) -> FaceDetectPredictor:
        return FaceDetectPredictor(load_weights(build_model(TASK, metadata["model"]), weights), metadata, device)

    def eval_plan(self, config: FaceDetectEvalConfig, predictor: FaceDetectPredictor) -> EvalPlan:
        images, annotations = dataset_files(config.data, config.split)
        dataset = CocoKeypoints(images, annotations, predictor.transform)
        evaluate = FaceBoxAP(annotations, dataset.category_map.category_ids, config.score_threshold)
        title = f"face boxes, {len(dataset)} images of {annotations.name}"
        return EvalPlan(dataset, FaceCollate(), evaluate, title, folder=f"eval_{config.split}")

    def onnx_predictor(self, model: nn.Module, metadata: dict[str, str], device: Any) -> FaceDetectPredictor:
        from sightkit.tasks.onnx_predictor import OnnxFaceDetectPredictor

        return OnnxFaceDetectPredictor(model, metadata, device)

    def export_spec(self, predictor: FaceDetectPredictor, imgsz: int = 0) -> ExportSpec:
        """``images`` [B, 3, H, W] normalised, an example of side ``imgsz`` rounded up to a multiple
        of 32; batch, height and width dynamic (multiples of 32, the predictor's padding); outputs
        ``logits``, ``boxes``, ``landmarks`` (:class:`~sightkit.models.FaceDetector`'s, in the input's
        pixels). The point grid is made of the feature map's symbolic size, so one graph runs the
        padded batches of :class:`FaceDetectPredictor` at any size."""
        side = -(-(imgsz or predictor.imgsz) // 32) * 32
        batch = torch.export.Dim("batch", max=64)
        height, width = torch.export.Dim("height_32", max=256), torch.export.Dim("width_32", max=256)
        return ExportSpec(
            module=OnnxFaceDetector(predictor.model),
            name=predictor.name,
            inputs={"images": example_input(2, 3, side, side)},  # 2: a batch of 1 would be specialised
            output_names=["logits", "boxes", "landmarks"],
            dynamic_shapes={"images": {0: batch, 2: 32 * height, 3: 32 * width}},
        )


FACE_DETECT = register_task(FaceDetectTask())


@export("tasks.TrainedFaceDetector")
def TrainedFaceDetector(
    weights: str | Path, device: torch.device | str = "cpu", score_threshold: float = 0.5
) -> FaceDetectPredictor:
    """:func:`sightkit.load` for face detector weights, with ``conf`` (its ``detect`` threshold) set."""
    predictor = runner.load_for(FACE_DETECT, weights, device)
    predictor.options = {"conf": score_threshold}
    return predictor


#: This task's modes (``sightkit.tasks.face_detect.train(config)``): the runner's, which read the task from the config.
train, evaluate, predict = runner.train, runner.evaluate, runner.predict
