"""Human pose estimation, top-down: RLE regression, plain regression or SimpleBaseline heatmaps.

Person boxes (the ground truth's, or a detector's from a COCO results JSON) are cropped to
the model's input (:class:`sightkit.data.TopDownKeypoints`), the model predicts the crop's
keypoints (:mod:`sightkit.models.pose`), and the keypoints are mapped back to the image and
scored with COCO's keypoint AP (:class:`sightkit.eval.PoseEvaluator`). :class:`PoseTask`
declares the parts to the task registry; :class:`PosePredictor` is what :func:`sightkit.load`
returns for pose weights. Its boxes come from ``boxes=`` (a COCO results JSON as ``sightkit
predict detect`` writes it, or arrays), from a detector run first (``detector=``: top-down),
or are the whole image.

The losses, by model kind (:class:`PoseCriterion`): ``rle`` the RLE negative log-likelihood
(:func:`sightkit.losses.rle_loss`) of the crop-normalised keypoints; ``regress`` L1 on the
same coordinates; ``heatmap`` the mean squared error to Gaussian heatmaps (SimpleBaseline's
``0.5 * MSE``), with the unlabelled keypoints and those outside the crop weighted 0.

A dataset is a folder as ``sightkit data synth people`` writes it::

    DATA/images/...                 images
    DATA/annotations/train.json     COCO keypoints JSON (a category with a "keypoints" list)
    DATA/annotations/val.json

Weights files carry in their metadata what rebuilding and using the model needs: the task,
the model name, the crop size, the keypoint names, flip pairs and skeleton, the person
category id, the normalisation and the heatmap decoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sightkit._api import export
from sightkit.config import EvalConfig, PredictConfig, setting, with_defaults
from sightkit.data.topdown import TopDownKeypoints, collate_topdown, warp_image
from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sightkit.engine.checkpoint import load_weights
from sightkit.eval.pose import PoseEvaluator
from sightkit.losses.rle import FORMS, Q_DENSITIES, rle_loss
from sightkit.models.pose import POSE_KINDS, pose_postprocess
from sightkit.nn.upsample import UPSAMPLE_MODES
from sightkit.ops.keypoints import (
    DECODE_METHODS,
    affine_keypoints,
    box_to_center_size,
    get_affine_transform,
    invert_affine,
    render_heatmaps,
)
from sightkit.predictor import Predictor, frame_results
from sightkit.results import Results
from sightkit.tasks import runner
from sightkit.tasks.common import TaskConfig, build_model, dataset_files
from sightkit.tasks.export import ExportSpec, example_input
from sightkit.tasks.registry import EvalPlan, Task, TrainingParts, register_task

TASK = "pose"
#: A keypoint counts towards a person's score when its own score is above this (SimpleBaseline's rescoring).
KEYPOINT_SCORE_FLOOR = 0.2


@export("tasks.PoseConfig")
@dataclass
@with_defaults(
    model="rle_r18_tiny", data="runs/data/people", out="runs/pose/train", epochs=50, batch=32, lr=1e-3,
    warmup_steps=100, best_metric="AP", best_mode="max",
)  # fmt: skip
class PoseConfig(TaskConfig):
    """Settings of ``sightkit train pose``: the engine's keys plus the pose ones. The defaults
    follow SimpleBaseline and RLE (Adam(W) at 1e-3, crops 256x192 padded by 1.25, scale
    +-30 %, rotation +-40 degrees with probability 0.6, flips), on a cosine schedule."""

    input_size: tuple[int, ...] = setting((256, 192), "crop height and width, e.g. [256,192]")
    padding: float = setting(1.25, "person box enlargement before cropping")
    scale_jitter: float = setting(0.3, "training crop scale within 1 +- this")
    rotation: float = setting(40.0, "training rotation spread, degrees (clipped at 2x)")
    rotation_prob: float = setting(0.6, "probability of a training rotation")
    flip_prob: float = setting(0.5, "probability of a training horizontal flip")
    upsample: str = setting("deconv", f"heatmap head upsampling: {', '.join(UPSAMPLE_MODES)}")
    heatmap_sigma: float = setting(2.0, "Gaussian target sigma, heatmap cells")
    rle_form: str = setting("paper", f"RLE loss form: {', '.join(FORMS)}")
    rle_q: str = setting("laplace", f"RLE base density: {', '.join(Q_DENSITIES)}")
    decode: str = setting("taylor", f"heatmap decoding: {', '.join(DECODE_METHODS)}")
    flip_test: bool = setting(True, "average with the flipped crop at evaluation")


@export("tasks.PoseEvalConfig")
@dataclass
@with_defaults(data="runs/data/people", batch=32)
class PoseEvalConfig(EvalConfig):
    """Settings of ``sightkit eval pose`` (``batch``: people per forward pass)."""

    boxes: str = setting("", "COCO results JSON of person detections, as predict detect writes ('' : ground truth)")
    min_score: float = setting(0.0, "detections scoring lower are left out")
    oks_nms: float = setting(0.9, "OKS-NMS threshold with detector boxes (1: off)")
    flip_test: bool = setting(True, "average with the flipped crop")
    decode: str = setting("", "heatmap decoding ('' : as trained)")


@export("tasks.PosePredictConfig")
@dataclass
@with_defaults(out="runs/pose/predict", conf=0.0)
class PosePredictConfig(PredictConfig):
    """Settings of ``sightkit predict pose`` (``conf``: the lowest person score kept)."""

    boxes: str = setting("", "COCO results JSON of person boxes, as predict detect writes ('' : see detector)")
    detector: str = setting("", "detection weights run first for the person boxes ('' : the whole image)")
    detector_conf: float = setting(0.5, "the detector's conf (with detector=)")
    keypoint_conf: float = setting(0.3, "draw keypoints scoring at least this")
    flip_test: bool = setting(True, "average with the flipped crop")


# --------------------------------------------------------------------------- loss


@export("tasks.PoseCriterion")
class PoseCriterion:
    """The loss of a pose model on top-down targets, as a dict of one named loss.

    ``criterion(outputs, targets)`` with ``targets["keypoints"]`` ``[B, K, 3]`` in crop
    pixels (``v = 0``: no loss) returns ``{"loss_rle"}``, ``{"loss_l1"}`` or
    ``{"loss_heatmap"}`` by the model's kind (module docstring).

    Args:
        model: the pose model (RLE's flow is read from it, so it trains with the model).
        input_size: ``(H, W)`` of the crops.
        heatmap_sigma: the Gaussian targets' sigma, heatmap cells.
        rle_form, rle_q: :func:`sightkit.losses.rle_loss`'s ``form`` and ``q``.
    """

    def __init__(
        self,
        model: nn.Module,
        input_size: Sequence[int],
        heatmap_sigma: float = 2.0,
        rle_form: str = "paper",
        rle_q: str = "laplace",
    ) -> None:
        kind = getattr(model, "kind", None)
        if kind not in POSE_KINDS:
            raise ValueError(f"model must be a pose model (kind one of {POSE_KINDS}), got {type(model).__name__}")
        if rle_form not in FORMS or rle_q not in Q_DENSITIES:
            raise ValueError(
                f"rle_form must be one of {FORMS} and rle_q one of {Q_DENSITIES}; got {rle_form!r}, {rle_q!r}"
            )
        if heatmap_sigma <= 0:
            raise ValueError(f"heatmap_sigma must be > 0, got {heatmap_sigma}")
        self.kind, self.model = kind, model
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_sigma, self.rle_form, self.rle_q = heatmap_sigma, rle_form, rle_q

    def __call__(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        keypoints = targets["keypoints"]
        weight = (keypoints[..., 2] > 0).float()
        height, width = self.input_size
        if self.kind == "heatmap":
            heatmaps = outputs["heatmaps"].float()
            cells = keypoints[..., :2] * keypoints.new_tensor([heatmaps.shape[-1] / width, heatmaps.shape[-2] / height])
            goal = render_heatmaps(cells, heatmaps.shape[-2:], self.heatmap_sigma)
            error = (heatmaps - goal).square() * weight[..., None, None]
            return {"loss_heatmap": 0.5 * error.mean()}
        normalised = keypoints[..., :2] / keypoints.new_tensor([width, height]) - 0.5
        if self.kind == "rle":
            loss = rle_loss(
                outputs["coords"],
                outputs["sigma"],
                normalised,
                self.model.flow,
                weight,
                q=self.rle_q,
                form=self.rle_form,
            )
            return {"loss_rle": loss}
        l1 = (outputs["coords"].float() - normalised).abs().sum(-1) * weight
        return {"loss_l1": l1.sum() / weight.sum().clamp(min=1)}


# --------------------------------------------------------------------------- model and weights


def weights_metadata(config: PoseConfig, dataset: TopDownKeypoints) -> dict[str, str]:
    """What a weights file needs to rebuild and use its model (safetensors metadata, str -> str)."""
    return {
        "task": TASK,
        "model": config.model,
        "input_size": json.dumps(list(config.input_size)),
        "keypoint_names": json.dumps(list(dataset.keypoint_names)),
        "flip_pairs": json.dumps([list(pair) for pair in dataset.flip_pairs]),
        "skeleton": json.dumps(dataset.coco.skeleton),
        "category_id": str(dataset.coco.keypoint_category_id),
        "upsample": config.upsample,
        "decode": config.decode,
        "padding": str(config.padding),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
    }


# --------------------------------------------------------------------------- inference


@torch.no_grad()
def predict_crops(
    model: nn.Module,
    crops: Tensor,
    input_size: Sequence[int],
    flip_pairs: Sequence[tuple[int, int]],
    flip_test: bool = True,
    decode: str = "taylor",
) -> tuple[Tensor, Tensor]:
    """Keypoints ``[B, K, 2]`` in crop pixels and scores ``[B, K]`` of normalised crops
    ``[B, 3, H, W]``, with the flip test (one forward pass on crops and mirrored crops)."""
    count = crops.shape[0]
    if flip_test:
        outputs = model(torch.cat([crops, crops.flip(-1)]))
        plain = {key: value[:count] for key, value in outputs.items()}
        flipped = {key: value[count:] for key, value in outputs.items()}
        return pose_postprocess(plain, input_size, flipped, flip_pairs, decode)
    return pose_postprocess(model(crops), input_size, decode=decode)


def person_scores(box_scores: Tensor, keypoint_scores: Tensor) -> Tensor:
    """A person's score: its box score times the mean score of its keypoints above
    :data:`KEYPOINT_SCORE_FLOOR` (SimpleBaseline's rescoring; all keypoints when none is)."""
    above = keypoint_scores > KEYPOINT_SCORE_FLOOR
    mean_above = (keypoint_scores * above).sum(-1) / above.sum(-1).clamp(min=1)
    return box_scores * torch.where(above.any(-1), mean_above, keypoint_scores.mean(-1))


class PoseEvaluate:
    """The engine's ``evaluate(model, loader)`` for top-down pose: crops -> keypoints in the
    image -> :class:`PoseEvaluator` (COCO keypoint AP; PCK and errors with ground-truth boxes)."""

    def __init__(
        self,
        annotations: str | Path,
        keypoint_names: Sequence[str],
        input_size: Sequence[int],
        flip_pairs: Sequence[tuple[int, int]],
        *,
        category_id: int | None = None,
        flip_test: bool = True,
        decode: str = "taylor",
        oks_nms: float | None = None,
    ) -> None:
        self.annotations, self.keypoint_names, self.category_id = annotations, list(keypoint_names), category_id
        self.input_size, self.flip_pairs = tuple(input_size), list(flip_pairs)
        self.flip_test, self.decode, self.oks_nms = flip_test, decode, oks_nms
        self.last: PoseEvaluator | None = None
        self.results: list[dict[str, Any]] = []

    @torch.no_grad()
    def __call__(self, model: nn.Module, loader: DataLoader, progress: Progress | None = None) -> dict[str, float]:
        evaluator = PoseEvaluator(
            self.annotations, self.keypoint_names, category_id=self.category_id, oks_nms_threshold=self.oks_nms
        )
        device = next(model.parameters()).device
        task = progress.add_task("evaluating", total=len(loader)) if progress is not None else None
        self.results = []
        for crops, targets in loader:
            points, scores = predict_crops(
                model, crops.to(device), self.input_size, self.flip_pairs, self.flip_test, self.decode
            )
            image_points = affine_keypoints(points.cpu().double(), targets["inverse"]).float()
            keypoints = torch.cat([image_points, scores.cpu()[..., None]], -1)
            people = person_scores(targets["score"], scores.cpu())
            truth = None if loader.dataset.uses_detections else targets["image_keypoints"]
            evaluator.update(targets["image_id"], keypoints, people, targets["area"], targets["box"], truth)
            for image_id, pose, score in zip(targets["image_id"].tolist(), keypoints, people.tolist(), strict=True):
                values = [round(v, 2) for v in pose.flatten().tolist()]
                record = {"image_id": image_id, "category_id": evaluator.category_id, "score": round(score, 5)}
                self.results.append({**record, "keypoints": values})
            if progress is not None and task is not None:
                progress.advance(task)
        self.last = evaluator
        return evaluator.compute()


# --------------------------------------------------------------------------- data


def build_datasets(config: PoseConfig) -> tuple[TopDownKeypoints, TopDownKeypoints | None]:
    """Training people (augmented) and validation people (ground-truth boxes)."""
    if len(config.input_size) != 2:
        raise ValueError(f"input_size must be [height, width], got {list(config.input_size)}")
    images, train_json = dataset_files(config.data, config.train_split, keypoints=True)
    train = TopDownKeypoints(
        images,
        train_json,
        config.input_size,
        train=True,
        padding=config.padding,
        scale_jitter=config.scale_jitter,
        rotation=config.rotation,
        rotation_prob=config.rotation_prob,
        flip_prob=config.flip_prob,
        max_pixels=config.max_pixels,
    )
    if len(train) == 0:
        raise ValueError(f"{train_json} has no person with a labelled keypoint to train on")
    val = None
    if config.val_split:
        images, val_json = dataset_files(config.data, config.val_split, keypoints=True)
        size, padding, max_pixels = config.input_size, config.padding, config.max_pixels
        val = TopDownKeypoints(images, val_json, size, padding=padding, max_pixels=max_pixels)
        if val.keypoint_names != train.keypoint_names:
            raise ValueError(f"{val_json} and {train_json} name different keypoints")
    return train, val


def read_box_file(path: str | Path, category_id: int | None = None) -> dict[str, np.ndarray]:
    """Person boxes by image file name from a COCO results JSON (``[{"file_name", "bbox": [x, y,
    w, h], "score", "category_id"}, ...]``, as ``sightkit predict detect`` writes it):
    ``{name: [N, 5]}`` rows of ``x1, y1, x2, y2, score``, only those of ``category_id`` when
    it is given (records without a category count as people).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not such a list.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"boxes={str(path)!r} does not exist; give the predictions.json of sightkit predict detect"
        )
    try:
        records = json.loads(file.read_text())
        boxes: dict[str, list[list[float]]] = {}
        for record in records:
            if category_id is not None and int(record.get("category_id", category_id)) != category_id:
                continue
            x, y, w, h = (float(v) for v in record["bbox"])
            boxes.setdefault(str(record["file_name"]), []).append([x, y, x + w, y + h, float(record.get("score", 1.0))])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"boxes={str(path)!r} must be a COCO results JSON whose records have file_name, bbox [x, y, w, h] and "
            f"score, as sightkit predict detect writes ({type(error).__name__}: {error})"
        ) from None
    return {name: np.array(rows, dtype=np.float64) for name, rows in boxes.items()}


def _as_boxes(value: Any, where: str) -> np.ndarray:
    rows = np.asarray(value, dtype=np.float64).reshape(-1, np.shape(value)[-1] if np.size(value) else 4)
    if rows.shape[1] not in (4, 5):
        raise ValueError(f"boxes for {where} must be [N, 4] xyxy or [N, 5] xyxy + score, got shape {rows.shape}")
    return np.concatenate([rows, np.ones((len(rows), 1))], 1) if rows.shape[1] == 4 else rows


# --------------------------------------------------------------------------- the predictor


@export("tasks.PosePredictor")
class PosePredictor(Predictor):
    """Pose weights, called on images: ``Results`` with the people's ``boxes``, ``scores``
    (SimpleBaseline's rescoring), ``keypoints`` ``[N, K, 3]`` (x, y, score in image pixels),
    ``labels`` (0, the person class) and the skeleton in ``extra``.

    Options:
        conf: keep people scoring at least this (default 0).
        boxes: the people's boxes: None (the detector's, else the whole image), an ``[N, 4]``
            or ``[N, 5]`` (with scores) array for every image, a dict of such arrays by file
            name, or the path of a COCO results JSON (:func:`read_box_file`).
        detector: a detection :class:`~sightkit.Predictor` or its weights file, run first
            (top-down; boxes of a class named "person" when it has one, else all).
        detector_conf: the detector's ``conf`` (default 0.5).
        flip_test: average with the mirrored crops (default True).
        keypoint_conf: keypoints scoring below it are not drawn (default 0.3).
    """

    task = "pose"
    options: ClassVar[dict[str, Any]] = {
        "conf": 0.0, "boxes": None, "detector": None, "detector_conf": 0.5, "flip_test": True, "keypoint_conf": 0.3
    }  # fmt: skip

    def __init__(self, model: nn.Module, metadata: dict[str, str], device: Any = None) -> None:
        super().__init__(model, metadata, device)
        height, width = json.loads(metadata["input_size"])
        self.input_size = (int(height), int(width))
        self.keypoint_names: list[str] = json.loads(metadata["keypoint_names"])
        self.flip_pairs = [(int(i), int(j)) for i, j in json.loads(metadata["flip_pairs"])]
        self.skeleton: list[list[int]] = json.loads(metadata["skeleton"])
        self.category_id, self.decode = int(metadata["category_id"]), metadata["decode"]
        self.padding = float(metadata["padding"])
        self.mean, self.std = json.loads(metadata["mean"]), json.loads(metadata["std"])
        self.names = ["person"]

    def settings(self, **given: Any) -> dict[str, Any]:
        settings = super().settings(**given)
        if isinstance(settings["boxes"], str | Path):
            settings["boxes"] = read_box_file(settings["boxes"], self.category_id) if str(settings["boxes"]) else None
        settings["detector"] = self.companion(settings["detector"], "detect")
        return settings

    def person_boxes(self, frames: Sequence[Any], settings: dict[str, Any]) -> list[np.ndarray]:
        """``[N, 5]`` (x1, y1, x2, y2, score) boxes of the people in each frame."""
        given, detector = settings["boxes"], settings["detector"]
        if detector:
            found = detector.predict_frames(frames, detector.settings(conf=settings["detector_conf"]))
            person = detector.names.index("person") if "person" in detector.names else None
            return [
                np.concatenate([r.boxes, r.scores[:, None]], 1)[(r.labels == person) if person is not None else ...]
                for r in found
            ]
        boxes = []
        for frame in frames:
            height, width = frame.image.shape[:2]
            whole = np.array([[0.0, 0.0, width, height, 1.0]])
            if given is None:
                boxes.append(whole)
            elif isinstance(given, dict):
                rows = given.get(Path(frame.path).name)
                boxes.append(np.zeros((0, 5)) if rows is None else _as_boxes(rows, frame.path))
            else:
                boxes.append(_as_boxes(given, frame.path))
        return boxes

    def preprocess(self, frames: Sequence[Any], settings: dict[str, Any]) -> dict[str, Any]:
        height, width = self.input_size
        mean = torch.tensor(self.mean).view(3, 1, 1) * 255
        std = torch.tensor(self.std).view(3, 1, 1) * 255
        boxes = self.person_boxes(frames, settings)
        crops, matrices = [], []
        for frame, rows in zip(frames, boxes, strict=True):
            center, size = box_to_center_size(torch.from_numpy(rows[:, :4]), width / height, self.padding)
            frame_matrices = get_affine_transform(center, size, (width, height))
            matrices.append(frame_matrices)
            crops += [
                torch.from_numpy(warp_image(frame.image, m, self.input_size)).permute(2, 0, 1) for m in frame_matrices
            ]
        batch = (torch.stack(crops).float() - mean) / std if crops else torch.zeros(0, 3, height, width)
        return {
            "crops": batch.to(self.device),
            "boxes": boxes,
            "matrices": matrices,
            "flip_test": settings["flip_test"],
        }

    def forward(self, inputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        return predict_crops(
            self.model, inputs["crops"], self.input_size, self.flip_pairs, inputs["flip_test"], self.decode
        )

    def postprocess(
        self, outputs: tuple[Tensor, Tensor], inputs: dict[str, Any], frames: Sequence[Any], settings: dict[str, Any]
    ) -> list[Results]:
        points, scores = (value.cpu() for value in outputs)
        results, start = [], 0
        for frame, rows, matrices in zip(frames, inputs["boxes"], inputs["matrices"], strict=True):
            end = start + len(rows)
            image_points = affine_keypoints(points[start:end].double(), invert_affine(matrices)).float()
            keypoints = torch.cat([image_points, scores[start:end, :, None]], -1)
            people = person_scores(torch.from_numpy(rows[:, 4]).float(), scores[start:end])
            keep = people >= settings["conf"]
            extra = {
                "skeleton": self.skeleton,
                "keypoint_names": self.keypoint_names,
                "threshold": settings["keypoint_conf"],
            }
            results.append(
                frame_results(
                    frame,
                    self.task,
                    self.names,
                    category_ids=[self.category_id],
                    boxes=rows[keep.numpy(), :4],
                    scores=people[keep],
                    labels=torch.zeros(int(keep.sum()), dtype=torch.long),
                    keypoints=keypoints[keep],
                    extra=extra,
                )
            )
            start = end
        return results


class OnnxPose(nn.Module):
    """A pose model whose dict of outputs becomes a tuple in ``names`` order, for export."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[name] for name in self.names)


# --------------------------------------------------------------------------- the task


class PoseTask(Task):
    """Top-down human pose (``sightkit train|eval|predict pose``)."""

    name = "pose"
    summary = "keypoints of people (RLE, regression, heatmaps), top-down from person boxes"
    train_config, eval_config, predict_config = PoseConfig, PoseEvalConfig, PosePredictConfig

    def training_parts(self, config: PoseConfig) -> TrainingParts:
        for key, value, choices in (
            ("decode", config.decode, DECODE_METHODS),
            ("upsample", config.upsample, UPSAMPLE_MODES),
        ):
            if value not in choices:
                raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        train_set, val_set = build_datasets(config)
        model = build_model(self.name, config.model, num_keypoints=train_set.num_keypoints, upsample=config.upsample)
        criterion = PoseCriterion(model, config.input_size, config.heatmap_sigma, config.rle_form, config.rle_q)
        evaluate = None
        if val_set is not None:
            evaluate = PoseEvaluate(
                val_set.annotation_file,
                val_set.keypoint_names,
                config.input_size,
                val_set.flip_pairs,
                category_id=val_set.coco.keypoint_category_id,
                flip_test=config.flip_test,
                decode=config.decode,
            )
        return TrainingParts(
            model, criterion, train_set, val_set, collate_topdown, evaluate, weights_metadata(config, train_set)
        )

    def load(self, weights: str | Path, metadata: dict[str, str], device: Any) -> PosePredictor:
        names = json.loads(metadata["keypoint_names"])
        model = build_model(self.name, metadata["model"], num_keypoints=len(names), upsample=metadata["upsample"])
        return PosePredictor(load_weights(model, weights), metadata, device)

    def eval_plan(self, config: PoseEvalConfig, predictor: PosePredictor) -> EvalPlan:
        images, annotations = dataset_files(config.data, config.split)
        dataset = TopDownKeypoints(
            images,
            annotations,
            predictor.input_size,
            boxes=config.boxes or None,
            padding=predictor.padding,
            mean=predictor.mean,
            std=predictor.std,
            min_score=config.min_score,
        )
        if list(dataset.keypoint_names) != predictor.keypoint_names:
            raise ValueError(
                f"the weights predict keypoints {predictor.keypoint_names}, but {annotations} has "
                f"{list(dataset.keypoint_names)}"
            )
        if len(dataset) == 0:
            with_boxes = f" with boxes={config.boxes}" if config.boxes else ""
            raise ValueError(f"no person to evaluate in {annotations}{with_boxes}")
        decode = config.decode or predictor.decode
        if decode not in DECODE_METHODS:
            raise ValueError(f"decode must be one of {', '.join(DECODE_METHODS)}, got {decode!r}")
        evaluate = PoseEvaluate(
            annotations,
            predictor.keypoint_names,
            predictor.input_size,
            predictor.flip_pairs,
            category_id=predictor.category_id,
            flip_test=config.flip_test,
            decode=decode,
            oks_nms=config.oks_nms if config.boxes and config.oks_nms < 1 else None,
        )

        def report(out: Path, console: Console) -> list[str]:
            evaluator = evaluate.last
            (out / "keypoints.json").write_text(json.dumps(evaluate.results))
            (out / "per_keypoint.json").write_text(json.dumps(evaluator.rows, indent=2))
            evaluator.coco.plot_precision_recall(out / "pr_curve.png")
            if evaluator.rows:
                console.print(evaluator.per_keypoint_table())
            return ["keypoints.json", "per_keypoint.json", "pr_curve.png"]

        boxes = f"detections of {config.boxes}" if config.boxes else "ground-truth boxes"
        title = f"COCO keypoint metrics, {len(dataset)} people of {annotations.name} ({boxes})"
        return EvalPlan(dataset, collate_topdown, evaluate, title, report, f"eval_{config.split}")

    def predict_options(self, config: PosePredictConfig) -> dict[str, Any]:
        return {
            "boxes": config.boxes or None, "detector": config.detector or None,
            "detector_conf": config.detector_conf, "flip_test": config.flip_test,
            "keypoint_conf": config.keypoint_conf,
        }  # fmt: skip

    def onnx_predictor(self, model: nn.Module, metadata: dict[str, str], device: Any) -> PosePredictor:
        return PosePredictor(model, metadata, device)

    def export_spec(self, predictor: PosePredictor, imgsz: int = 0) -> ExportSpec:
        """The model with its outputs as a tuple (``heatmaps``; ``coords``; or ``coords, sigma``),
        example crops ``images`` ``[2, 3, H, W]`` (``imgsz`` sets ``H`` and keeps the aspect
        ratio) and a dynamic batch axis (two examples: torch.export specialises a size-1 axis)."""
        height, width = predictor.input_size
        if imgsz:
            height, width = imgsz, max(1, round(imgsz * width / height))
        with torch.no_grad():
            names = list(predictor.model(torch.zeros(1, 3, height, width, device=predictor.device)))
        return ExportSpec(
            module=OnnxPose(predictor.model, names),
            name=predictor.name,
            inputs={"images": example_input(2, 3, height, width)},
            output_names=names,
            dynamic_shapes={"images": {0: torch.export.Dim("batch", max=256)}},
        )


POSE = register_task(PoseTask())


#: This task's modes (``sightkit.tasks.pose.train(config)``): the runner's, which read the task from the config;
#: and ``sightkit.load`` for its weights only.
train, evaluate, predict, load_pose = runner.train, runner.evaluate, runner.predict, POSE.load_weights
