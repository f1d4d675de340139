"""Human pose estimation, top-down: RLE regression, plain regression or SimpleBaseline heatmaps.

Person boxes (the ground truth's, or a detector's from a COCO results JSON) are cropped to
the model's input (:class:`sightkit.data.TopDownKeypoints`), the model predicts the crop's
keypoints (:mod:`sightkit.models.pose`), and the keypoints are mapped back to the image and
scored with COCO's keypoint AP (:class:`sightkit.eval.PoseEvaluator`). The command line
(``sightkit train|eval|predict pose``, ``sightkit export onnx``) calls :func:`train`,
:func:`evaluate`, :func:`predict` and :func:`export_spec`.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sightkit._api import export
from sightkit.data.coco import read_image
from sightkit.data.topdown import TopDownKeypoints, collate_topdown, warp_image
from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sightkit.engine.checkpoint import load_weights
from sightkit.engine.trainer import TrainConfig, Trainer
from sightkit.eval.pose import PoseEvaluator
from sightkit.losses.rle import FORMS, Q_DENSITIES, rle_loss
from sightkit.models.pose import POSE_KINDS, pose_postprocess
from sightkit.models.registry import create_model, list_models
from sightkit.nn.upsample import UPSAMPLE_MODES
from sightkit.ops.keypoints import (
    DECODE_METHODS,
    affine_keypoints,
    box_to_center_size,
    get_affine_transform,
    invert_affine,
    render_heatmaps,
)
from sightkit.tasks.common import image_paths, read_metadata, resolve_device
from sightkit.tasks.detect import dataset_files
from sightkit.tasks.export import ExportSpec

TASK = "pose"
#: A keypoint counts towards a person's score when its own score is above this (SimpleBaseline's rescoring).
KEYPOINT_SCORE_FLOOR = 0.2


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@export("tasks.PoseConfig")
@dataclass
class PoseConfig(TrainConfig):
    """Settings of ``sightkit train pose``: the engine's keys plus the pose ones. The defaults
    follow SimpleBaseline and RLE (Adam(W) at 1e-3, crops 256x192 padded by 1.25, scale
    +-30 %, rotation +-40 degrees with probability 0.6, flips), on a cosine schedule."""

    model: str = field(default="rle_r18_tiny", metadata=_help("rle_*, regress_* or heatmap_* (list_models())"))
    data: str = field(default="runs/data/people", metadata=_help("dataset folder: images/, annotations/*.json"))
    train_split: str = field(default="train", metadata=_help("annotations/<train_split>.json for training"))
    val_split: str = field(default="val", metadata=_help("annotations/<val_split>.json for evaluation ('' : none)"))
    input_size: tuple[int, ...] = field(default=(256, 192), metadata=_help("crop height and width, e.g. [256,192]"))
    padding: float = field(default=1.25, metadata=_help("person box enlargement before cropping"))
    scale_jitter: float = field(default=0.3, metadata=_help("training crop scale within 1 +- this"))
    rotation: float = field(default=40.0, metadata=_help("training rotation spread, degrees (clipped at 2x)"))
    rotation_prob: float = field(default=0.6, metadata=_help("probability of a training rotation"))
    flip_prob: float = field(default=0.5, metadata=_help("probability of a training horizontal flip"))
    upsample: str = field(default="deconv", metadata=_help(f"heatmap head upsampling: {', '.join(UPSAMPLE_MODES)}"))
    heatmap_sigma: float = field(default=2.0, metadata=_help("Gaussian target sigma, heatmap cells"))
    rle_form: str = field(default="paper", metadata=_help(f"RLE loss form: {', '.join(FORMS)}"))
    rle_q: str = field(default="laplace", metadata=_help(f"RLE base density: {', '.join(Q_DENSITIES)}"))
    decode: str = field(default="taylor", metadata=_help(f"heatmap decoding: {', '.join(DECODE_METHODS)}"))
    flip_test: bool = field(default=True, metadata=_help("average with the flipped crop at evaluation"))
    out: str = field(default="runs/pose/train", metadata=_help("run folder (checkpoints, metrics, plots)"))
    epochs: int = field(default=50, metadata=_help("passes over the training people (0: steps decides)"))
    batch: int = field(default=32, metadata=_help("global batch of one optimiser step, all processes together"))
    lr: float = field(default=1e-3, metadata=_help("base learning rate (SimpleBaseline, RLE: Adam at 1e-3)"))
    warmup_steps: int = field(default=100, metadata=_help("linear warm-up steps"))
    best_metric: str = field(default="AP", metadata=_help("metric that picks best.pt"))
    best_mode: str = field(default="max", metadata=_help("max or min: which way best_metric improves"))


@export("tasks.PoseEvalConfig")
@dataclass
class PoseEvalConfig:
    """Settings of ``sightkit eval pose``."""

    weights: str = field(default="", metadata=_help("a .safetensors file written by sightkit train pose"))
    data: str = field(default="runs/data/people", metadata=_help("dataset folder: images/, annotations/*.json"))
    split: str = field(default="val", metadata=_help("annotations/<split>.json to evaluate"))
    boxes: str = field(default="", metadata=_help("COCO results JSON of person detections ('' : ground-truth boxes)"))
    min_score: float = field(default=0.0, metadata=_help("detections scoring lower are left out"))
    oks_nms: float = field(default=0.9, metadata=_help("OKS-NMS threshold with detector boxes (1: off)"))
    flip_test: bool = field(default=True, metadata=_help("average with the flipped crop"))
    decode: str = field(default="", metadata=_help("heatmap decoding ('' : as trained)"))
    out: str = field(default="", metadata=_help("folder for metrics and tables ('' : next to weights)"))
    batch: int = field(default=32, metadata=_help("people per forward pass"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))
    workers: int = field(default=0, metadata=_help("DataLoader worker processes"))


@export("tasks.PosePredictConfig")
@dataclass
class PosePredictConfig:
    """Settings of ``sightkit predict pose``."""

    weights: str = field(default="", metadata=_help("a .safetensors file written by sightkit train pose"))
    source: str = field(default="", metadata=_help("an image or a folder of images"))
    boxes: str = field(
        default="", metadata=_help("JSON {image file name: [[x1,y1,x2,y2(,score)], ...]} ('' : the whole image)")
    )
    out: str = field(default="runs/pose/predict", metadata=_help("folder for the pictures and poses.json"))
    conf: float = field(default=0.3, metadata=_help("draw keypoints scoring at least this"))
    flip_test: bool = field(default=True, metadata=_help("average with the flipped crop"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))


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


def build_pose_model(name: str, num_keypoints: int, upsample: str = "deconv") -> nn.Module:
    """``create_model(name, num_keypoints=..., upsample=...)``, refusing models that are not pose models."""
    if name not in list_models():
        raise ValueError(f"model={name!r} is not a registered model; choose one of {', '.join(list_models())}")
    try:
        model = create_model(name, num_keypoints=num_keypoints, upsample=upsample)
    except TypeError:
        model = None
    if getattr(model, "kind", None) not in POSE_KINDS:
        pose = [n for n in list_models() if n.startswith(tuple(f"{k}_" for k in POSE_KINDS))]
        raise ValueError(f"model={name!r} is not a pose model; choose one of {', '.join(pose)}")
    return model


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


@dataclass
class LoadedPose:
    """A pose model rebuilt from a weights file, with what its metadata says about it."""

    model: nn.Module
    name: str
    input_size: tuple[int, int]
    keypoint_names: list[str]
    flip_pairs: list[tuple[int, int]]
    skeleton: list[list[int]]
    category_id: int
    decode: str
    padding: float
    mean: list[float]
    std: list[float]


def load_pose(weights: str | Path, device: torch.device | str = "cpu") -> LoadedPose:
    """Rebuild the model that wrote ``weights`` and load them (clear errors for other files)."""
    meta = read_metadata(weights)
    if meta.get("task") != TASK or "model" not in meta:
        raise ValueError(
            f"weights={str(weights)!r} were not written by `sightkit train pose` (their metadata: "
            f"task={meta.get('task')!r}, model={meta.get('model')!r})"
        )
    names = json.loads(meta["keypoint_names"])
    model = build_pose_model(meta["model"], len(names), meta["upsample"])
    load_weights(model, weights)
    height, width = json.loads(meta["input_size"])
    return LoadedPose(
        model=model.to(device).eval(),
        name=meta["model"],
        input_size=(int(height), int(width)),
        keypoint_names=names,
        flip_pairs=[(int(i), int(j)) for i, j in json.loads(meta["flip_pairs"])],
        skeleton=json.loads(meta["skeleton"]),
        category_id=int(meta["category_id"]),
        decode=meta["decode"],
        padding=float(meta["padding"]),
        mean=json.loads(meta["mean"]),
        std=json.loads(meta["std"]),
    )


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


# --------------------------------------------------------------------------- the four modes


def build_datasets(config: PoseConfig) -> tuple[TopDownKeypoints, TopDownKeypoints | None]:
    """Training people (augmented) and validation people (ground-truth boxes)."""
    if len(config.input_size) != 2:
        raise ValueError(f"input_size must be [height, width], got {list(config.input_size)}")
    images, train_json = dataset_files(config.data, config.train_split)
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
    )
    if len(train) == 0:
        raise ValueError(f"{train_json} has no person with a labelled keypoint to train on")
    val = None
    if config.val_split:
        images, val_json = dataset_files(config.data, config.val_split)
        val = TopDownKeypoints(images, val_json, config.input_size, padding=config.padding)
        if val.keypoint_names != train.keypoint_names:
            raise ValueError(f"{val_json} and {train_json} name different keypoints")
    return train, val


@export("tasks.train_pose")
def train(config: PoseConfig) -> dict[str, float]:
    """Train a pose model as ``config`` says; returns the last evaluation's metrics.

    Writes ``config.out`` as every engine run does (``config.yaml``, ``metrics.jsonl``,
    checkpoints, ``last.safetensors`` / ``best.safetensors`` with the metadata
    :func:`load_pose` reads, ``curves.png``).
    """
    for name, value, choices in (
        ("decode", config.decode, DECODE_METHODS),
        ("upsample", config.upsample, UPSAMPLE_MODES),
    ):
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    train_set, val_set = build_datasets(config)
    # The Trainer seeds every RNG, but only after the model exists: seed its initialisation here
    # so that seed= decides it too.
    torch.manual_seed(config.seed)
    model = build_pose_model(config.model, train_set.num_keypoints, config.upsample)
    criterion = PoseCriterion(model, config.input_size, config.heatmap_sigma, config.rle_form, config.rle_q)
    evaluate_fn = None
    if val_set is not None:
        evaluate_fn = PoseEvaluate(
            val_set.annotation_file,
            val_set.keypoint_names,
            config.input_size,
            val_set.flip_pairs,
            category_id=val_set.coco.keypoint_category_id,
            flip_test=config.flip_test,
            decode=config.decode,
        )
    elif config.best_metric == "AP":
        config.best_metric, config.best_mode = "val_loss", "min"
    trainer = Trainer(
        model,
        criterion,
        train_set,
        config,
        val_data=val_set,
        collate_fn=collate_topdown,
        evaluate=evaluate_fn,
        weights_metadata=weights_metadata(config, train_set),
    )
    return trainer.fit()


@export("tasks.evaluate_pose")
def evaluate(config: PoseEvalConfig, console: Console | None = None) -> dict[str, float]:
    """COCO keypoint AP/AR of a weights file on a dataset split (plus PCK and per-keypoint
    errors with ground-truth boxes); writes ``metrics.json``, ``keypoints.json`` (COCO results),
    ``per_keypoint.json`` and ``pr_curve.png`` to ``config.out`` and prints the tables."""
    console = console or Console()
    device = resolve_device(config.device)
    pose = load_pose(config.weights, device)
    images, annotations = dataset_files(config.data, config.split)
    dataset = TopDownKeypoints(
        images,
        annotations,
        pose.input_size,
        boxes=config.boxes or None,
        padding=pose.padding,
        mean=pose.mean,
        std=pose.std,
        min_score=config.min_score,
    )
    if list(dataset.keypoint_names) != pose.keypoint_names:
        raise ValueError(
            f"the weights predict keypoints {pose.keypoint_names}, but {annotations} has {list(dataset.keypoint_names)}"
        )
    if len(dataset) == 0:
        with_boxes = f" with boxes={config.boxes}" if config.boxes else ""
        raise ValueError(f"no person to evaluate in {annotations}{with_boxes}")
    decode = config.decode or pose.decode
    if decode not in DECODE_METHODS:
        raise ValueError(f"decode must be one of {', '.join(DECODE_METHODS)}, got {decode!r}")
    loader = DataLoader(dataset, batch_size=config.batch, num_workers=config.workers, collate_fn=collate_topdown)
    evaluate_fn = PoseEvaluate(
        annotations,
        pose.keypoint_names,
        pose.input_size,
        pose.flip_pairs,
        category_id=pose.category_id,
        flip_test=config.flip_test,
        decode=decode,
        oks_nms=config.oks_nms if config.boxes and config.oks_nms < 1 else None,
    )
    with Progress(console=console, transient=True) as progress:
        metrics = evaluate_fn(pose.model, loader, progress)
    evaluator = evaluate_fn.last
    assert evaluator is not None  # set by the call above
    out = Path(config.out) if config.out else Path(config.weights).parent / f"eval_{config.split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "keypoints.json").write_text(json.dumps(evaluate_fn.results))
    (out / "per_keypoint.json").write_text(json.dumps(evaluator.rows, indent=2))
    evaluator.coco.plot_precision_recall(out / "pr_curve.png")
    boxes = f"detections of {config.boxes}" if config.boxes else "ground-truth boxes"
    table = Table(title=f"COCO keypoint metrics, {len(dataset)} people of {annotations.name} ({boxes})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    if evaluator.rows:
        console.print(evaluator.per_keypoint_table())
    console.print(f"wrote metrics.json, keypoints.json, per_keypoint.json and pr_curve.png to [bold]{out}[/]")
    return metrics


def _read_boxes(path: str) -> dict[str, list[list[float]]]:
    if not path:
        return {}
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"boxes={path!r} does not exist")
    try:
        boxes = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"boxes={path!r} is not valid JSON ({error})") from None
    if not isinstance(boxes, dict) or not all(
        isinstance(v, list) and all(isinstance(b, list) and len(b) in (4, 5) for b in v) for v in boxes.values()
    ):
        raise ValueError(f"boxes={path!r} must map image file names to lists of [x1, y1, x2, y2] or [..., score]")
    return boxes


@export("tasks.predict_pose")
def predict(config: PosePredictConfig, console: Console | None = None) -> list[dict[str, Any]]:
    """Find the keypoints of the people in an image or a folder of images (the boxes of
    ``config.boxes``, else the whole image as one person); draws each picture with its
    skeletons into ``config.out`` and writes ``poses.json`` (image pixels, with scores)."""
    from sightkit.tasks.draw_pose import draw_poses

    console = console or Console()
    device = resolve_device(config.device)
    pose = load_pose(config.weights, device)
    paths = image_paths(config.source)
    given = _read_boxes(config.boxes)
    height, width = pose.input_size
    mean = torch.tensor(pose.mean).view(3, 1, 1) * 255
    std = torch.tensor(pose.std).view(3, 1, 1) * 255
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("predicting", total=len(paths))
        for path in paths:
            image = read_image(path)
            rows = given.get(path.name, [[0.0, 0.0, float(image.shape[-1]), float(image.shape[-2])]])
            boxes = torch.tensor([row[:4] for row in rows], dtype=torch.float64).reshape(-1, 4)
            box_scores = torch.tensor([row[4] if len(row) == 5 else 1.0 for row in rows])
            center, size = box_to_center_size(boxes, width / height, pose.padding)
            matrices = get_affine_transform(center, size, (width, height))
            pixels = image.numpy().transpose(1, 2, 0)
            crops = [torch.from_numpy(warp_image(pixels, m, pose.input_size)).permute(2, 0, 1) for m in matrices]
            batch = (torch.stack(crops).float() - mean) / std if crops else torch.zeros(0, 3, height, width)
            points, scores = predict_crops(
                pose.model, batch.to(device), pose.input_size, pose.flip_pairs, config.flip_test, pose.decode
            )
            image_points = affine_keypoints(points.cpu().double(), invert_affine(matrices)).float()
            keypoints = torch.cat([image_points, scores.cpu()[..., None]], -1)
            people = person_scores(box_scores, scores.cpu())
            picture = out / f"{path.stem}.jpg"
            draw_poses(image, keypoints, pose.skeleton, pose.keypoint_names, picture, boxes.float(), config.conf)
            found = [
                {
                    "box": [round(v, 2) for v in box],
                    "score": round(score, 4),
                    "keypoints": [[round(x, 2), round(y, 2), round(s, 4)] for x, y, s in kps],
                }
                for box, score, kps in zip(boxes.tolist(), people.tolist(), keypoints.tolist(), strict=True)
            ]
            records.append({"image": str(path), "picture": str(picture), "people": found})
            progress.advance(task)
    (out / "poses.json").write_text(json.dumps(records, indent=2))
    total = sum(len(r["people"]) for r in records)
    console.print(f"{total} people in {len(paths)} images; pictures and poses.json in [bold]{out}[/]")
    return records


def export_spec(weights: str | Path, imgsz: int = 0) -> ExportSpec:
    """What ``sightkit export onnx`` needs for pose weights: the model with its outputs as a
    tuple (``heatmaps``; ``coords``; or ``coords, sigma``), example crops ``images``
    ``[2, 3, H, W]`` (``imgsz`` sets ``H`` and keeps the aspect ratio) and a dynamic batch axis
    (two examples: torch.export specialises a size-1 axis, which cannot then be dynamic)."""
    pose = load_pose(weights)
    height, width = pose.input_size
    if imgsz:
        height, width = imgsz, max(1, round(imgsz * width / height))
    with torch.no_grad():
        names = list(pose.model(torch.zeros(1, 3, height, width)))
    return ExportSpec(
        module=OnnxPose(pose.model, names),
        name=pose.name,
        inputs={"images": torch.randn(2, 3, height, width)},
        output_names=names,
        dynamic_shapes={"images": {0: torch.export.Dim("batch", max=256)}},
    )


class OnnxPose(nn.Module):
    """A pose model whose dict of outputs becomes a tuple in ``names`` order, for export."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[name] for name in self.names)
