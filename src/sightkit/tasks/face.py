"""Face recognition: train an embedder with a margin softmax (ArcFace/CosFace, Partial FC),
evaluate it by the LFW protocol, export it.

A dataset is a folder in the layout that ``sightkit data synth faces`` writes under
``recognition/`` (and that insightface-style datasets use)::

    DATA/train/NAME/*.png       identity folders for training (one class per folder)
    DATA/test/NAME/*.png        other identities, the images pairs.txt names
    DATA/pairs.txt              LFW's pairs format
    DATA/landmarks.json         optional: 5 landmarks per image (else the images are aligned crops)

Training sees aligned crops with random flips; the model is the embedder followed by a
:class:`~sightkit.losses.PartialFC` classifier whose centres are sharded over the ranks
under ``torchrun``. Evaluation embeds the pair images (flip-averaged) and reports the
10-fold accuracy, the ROC's area and TAR at FAR. The weights file holds the embedder and
the classifier; :class:`FaceTask` (the task registry's entry) rebuilds the embedder alone
into a :class:`FacePredictor` (``sightkit.load``), which embeds the faces of images: every
face a face detector finds (``detector=``), else the whole image as an aligned crop.
"""

from __future__ import annotations

import json
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

from sightkit._api import export
from sightkit.config import EvalConfig, PredictConfig, setting, with_defaults
from sightkit.data.face_augment import FaceAugment
from sightkit.data.faces import (
    FACE_MEAN,
    FACE_STD,
    FaceFolder,
    collate_faces,
    face_crop,
    normalise_face,
    pair_files,
    read_lfw_pairs,
)
from sightkit.engine.checkpoint import load_model_state
from sightkit.engine.distributed import all_gather_object
from sightkit.eval.face import kfold_accuracy, plot_roc, roc_curve, tar_at_far
from sightkit.losses.partial_fc import PartialFC, exclude_from_ddp
from sightkit.models.face import embed_faces
from sightkit.ops.align import align_faces
from sightkit.predictor import Predictor, frame_results, image_tensor
from sightkit.results import Results
from sightkit.tasks import runner
from sightkit.tasks.common import TaskConfig, build_model
from sightkit.tasks.export import ExportSpec, example_input
from sightkit.tasks.registry import EvalPlan, Task, TrainingParts, register_task

TASK = "face"
#: FAR targets reported in the evaluation metrics (those the number of impostor pairs allows).
REPORTED_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@export("tasks.FaceConfig")
@dataclass
@with_defaults(
    model="iresnet18", data="runs/data/faces/recognition", train_split="train", val_split="test",
    out="runs/face/train", epochs=20, batch=128, lr=0.1, optimizer="sgd", weight_decay=5e-4,
    best_metric="accuracy", best_mode="max",
)  # fmt: skip
class FaceConfig(TaskConfig):
    """Settings of ``sightkit train face``: the engine's keys plus the recognition ones, with
    insightface's recipe as defaults (SGD lr 0.1, momentum 0.9, weight decay 5e-4, ArcFace
    s = 64, m = 0.5, embedding 512). ``data`` holds one folder of identity folders per split
    (``train_split`` to train on, ``val_split`` the pairs' images) and ``pairs``."""

    pairs: str = setting("pairs.txt", "LFW pairs file inside data ('' : no evaluation)")
    landmarks: str = setting("landmarks.json", "landmarks JSON inside data ('' : crops are aligned)")
    imgsz: int = setting(0, "side of the aligned crops (0: the model's input size)")
    embedding: int = setting(0, "embedding size (0: the model's, 512 or 128 for *_tiny)")
    scale: float = setting(64.0, "margin softmax scale s")
    m1: float = setting(1.0, "SphereFace multiplicative angular margin (1: none)")
    m2: float = setting(0.5, "ArcFace additive angular margin, radians")
    m3: float = setting(0.0, "CosFace additive cosine margin (e.g. 0.4 with m2=0)")
    sample_rate: float = setting(1.0, "Partial FC: fraction of class centres per step")
    flip: bool = setting(True, "add the mirrored crop's embedding at evaluation")
    augment: dict[str, float] = setting(  # noqa: RUF009  (a default_factory: each config gets its own dict)
        factory=dict,
        help="one-to-many augmentation of training faces, probability per group: {pose: 0.5, illumination: 0.5, "
        "occlusion: 0.3, expression: 0.2} (strengths too: turn, gamma, erase, ...; {} : off)",
    )


@export("tasks.FaceEvalConfig")
@dataclass
@with_defaults(data="runs/data/faces/recognition", split="test", batch=64)
class FaceEvalConfig(EvalConfig):
    """Settings of ``sightkit eval face``: verification on LFW-style pairs of the identity folders
    ``data/split``."""

    pairs: str = setting("pairs.txt", "LFW pairs.txt, inside data (or an absolute path)")
    landmarks: str = setting("landmarks.json", "landmarks JSON, inside data ('' : the images are aligned crops)")
    flip: bool = setting(True, "add the mirrored crop's embedding")


@export("tasks.FacePredictConfig")
@dataclass
@with_defaults(out="runs/face/predict")
class FacePredictConfig(PredictConfig):
    """Settings of ``sightkit predict face``: embeddings of the faces of images (``conf``: the
    detector's)."""

    detector: str = setting("", "face_detect weights that find the faces ('' : each image is an aligned crop)")
    flip: bool = setting(True, "add the mirrored crop's embedding")


# --------------------------------------------------------------------------- model


class FaceTrainer(nn.Module):
    """The embedder and its margin-softmax classifier: ``forward(images, labels) -> loss``.

    The classifier's centres are excluded from DDP (each rank holds its own shard)."""

    def __init__(self, embedder: nn.Module, head: PartialFC) -> None:
        super().__init__()
        self.embedder, self.head = embedder, head
        exclude_from_ddp(self)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        return self.head(self.embedder(images), labels)


def margin_criterion(loss: Tensor, targets: Any) -> dict[str, Tensor]:
    """The engine's criterion: the model already returns the margin-softmax loss."""
    return {"loss_margin": loss}


def build_embedder(name: str, embedding: int = 0, imgsz: int = 0) -> nn.Module:
    """The face model ``name`` with the embedding size and crop side when given (0: the model's)."""
    overrides = {"num_features": embedding} if embedding else {}
    if imgsz:
        overrides["input_size"] = imgsz
    return build_model(TASK, name, **overrides)


def weights_metadata(config: FaceConfig, embedder: nn.Module, num_classes: int) -> dict[str, str]:
    """What a weights file needs to rebuild and use its embedder, as safetensors metadata."""
    return {
        "task": TASK,
        "model": config.model,
        "embedding": str(embedder.num_features),
        "imgsz": str(embedder.input_size),
        "mean": json.dumps(list(FACE_MEAN)),
        "std": json.dumps(list(FACE_STD)),
        "classes": str(num_classes),
        "margins": json.dumps({"scale": config.scale, "m1": config.m1, "m2": config.m2, "m3": config.m3}),
    }


def _inside(data: str, name: str) -> str | None:
    return str(Path(data) / name) if name else None


# --------------------------------------------------------------------------- evaluation


class PairEvaluate:
    """The engine's ``evaluate(model, loader)`` for face verification: embeds the loader's
    images (each rank its shard, gathered), scores the pairs by cosine and reports the LFW
    10-fold accuracy, the ROC area and TAR at FAR.

    Args:
        indices: ``[P, 2]`` positions of each pair's images in the loader's dataset.
        same: ``[P]`` same-person flags. folds: ``[P]`` LFW fold of each pair.
        flip: add the mirrored crops' embeddings.
    """

    def __init__(self, indices: Tensor, same: Tensor, folds: Tensor, flip: bool = True) -> None:
        self.indices, self.same, self.folds, self.flip = indices, same, folds, flip
        self.scores: Tensor | None = None

    @torch.no_grad()
    def __call__(self, model: nn.Module, loader: DataLoader, progress: Progress | None = None) -> dict[str, float]:
        embedder = model.embedder if isinstance(model, FaceTrainer) else model
        task = progress.add_task("embedding", total=len(loader)) if progress is not None else None
        rows, parts = [], []
        for inputs, sample_indices in loader:
            parts.append(embed_faces(embedder, inputs["images"], flip=self.flip).cpu())
            rows.append(sample_indices.cpu())
            if progress is not None and task is not None:
                progress.advance(task)
        gathered = all_gather_object((torch.cat(rows), torch.cat(parts)) if rows else None)
        rows = torch.cat([g[0] for g in gathered if g is not None])
        parts = torch.cat([g[1] for g in gathered if g is not None])
        embeddings = parts.new_zeros(int(rows.max()) + 1, parts.shape[1])
        embeddings[rows] = parts
        self.scores = (embeddings[self.indices[:, 0]] * embeddings[self.indices[:, 1]]).sum(1)
        return verification_metrics(self.scores, self.same, self.folds)


@export("tasks.verification_metrics")
def verification_metrics(scores: Tensor, same: Tensor, folds: Tensor | int = 10) -> dict[str, float]:
    """``accuracy`` and ``accuracy_std`` (LFW k-fold), ``threshold`` (best on all pairs), ``auc``
    and ``tar@far=F`` for the measurable FAR targets, from pair scores."""
    if isinstance(folds, Tensor) and torch.unique(folds).numel() < 2:
        folds = 10  # a pairs file of one set (LFW's view 1): ten consecutive blocks
    kfold = kfold_accuracy(scores, same, folds)
    metrics = {
        "accuracy": float(kfold["accuracy"]),
        "accuracy_std": float(kfold["std"]),
        "threshold": float(kfold["best_threshold"]),
        "auc": roc_curve(scores, same).auc,
    }
    for far, (tar, _) in tar_at_far(scores, same, REPORTED_FARS).items():
        metrics[f"tar@far={far:g}"] = tar
    return metrics


# --------------------------------------------------------------------------- data


def build_datasets(config: FaceConfig, imgsz: int) -> tuple[FaceFolder, FaceFolder | None, PairEvaluate | None]:
    """The training identities, the pairs' images and their evaluator (None without pairs)."""
    data = Path(config.data)
    if not data.is_dir():
        raise FileNotFoundError(
            f"data={str(data)!r} is not a folder; make one with `sightkit data synth faces` (then "
            f"data=runs/data/faces/recognition) or point data= at a folder with train/, test/ and pairs.txt"
        )
    landmarks = _inside(config.data, config.landmarks)
    augment = FaceAugment.from_mapping(config.augment)  # sightkit.data.face_augment; training only
    train = FaceFolder(
        data / config.train_split, imgsz, landmarks, train=True, augment=augment, max_pixels=config.max_pixels
    )
    if not config.pairs:
        return train, None, None
    pairs = read_lfw_pairs(data / config.pairs, data / config.val_split)
    files, indices, same, folds = pair_files(pairs)
    val = FaceFolder(data / config.val_split, imgsz, landmarks, files=files, max_pixels=config.max_pixels)
    return train, val, PairEvaluate(indices, same, folds, config.flip)


# --------------------------------------------------------------------------- the predictor


@export("tasks.FacePredictor")
class FacePredictor(Predictor):
    """Face embedder weights, called on images: ``Results.embeddings`` ``[N, D]`` (L2-normalised)
    of the faces a face detector finds (with their ``boxes``, ``scores``, ``landmarks`` and ``head_pose``), or
    of the whole image taken as one aligned crop (no detector; score 1).

    Options:
        conf: the detector's lowest face score (default 0.5).
        detector: a face_detect :class:`~sightkit.Predictor` or its weights file (None: none).
        flip: add the mirrored crop's embedding (insightface's flip test; default True).
    """

    task = TASK
    options: ClassVar[dict[str, Any]] = {"conf": 0.5, "detector": None, "flip": True}

    def __init__(self, model: nn.Module, metadata: dict[str, str], device: Any = None) -> None:
        super().__init__(model, metadata, device)
        self.imgsz = int(metadata["imgsz"])
        self.mean, self.std = json.loads(metadata["mean"]), json.loads(metadata["std"])
        self.names = ["face"]

    def settings(self, **given: Any) -> dict[str, Any]:
        settings = super().settings(**given)
        settings["detector"] = self.companion(settings["detector"], "face_detect")
        return settings

    def preprocess(self, frames: Sequence[Any], settings: dict[str, Any]) -> dict[str, Any]:
        detector, faces = settings["detector"], None
        if not detector:
            crops = torch.stack([face_crop(image_tensor(f), self.imgsz, None) for f in frames])
        else:
            faces = detector.predict_frames(frames, detector.settings(conf=settings["conf"]))
            aligned = []
            for frame, found in zip(frames, faces, strict=True):
                if not len(found.scores):
                    continue  # align_faces refuses an empty batch of faces
                landmarks = torch.from_numpy(found.landmarks).double() - 0.5  # alignment puts pixel centres at integers
                image, index = image_tensor(frame)[None].float(), torch.zeros(len(landmarks), dtype=torch.long)
                aligned.append(align_faces(image, landmarks, self.imgsz, index)[0])
            crops = torch.cat(aligned) if aligned else torch.zeros(0, 3, self.imgsz, self.imgsz)
        crops = normalise_face(crops, self.mean, self.std).to(self.device)
        return {"crops": crops, "faces": faces, "flip": settings["flip"]}

    def forward(self, inputs: dict[str, Any]) -> Tensor:
        if not len(inputs["crops"]):
            return inputs["crops"].new_zeros(0, self.model.num_features)
        return embed_faces(self.model, inputs["crops"], flip=inputs["flip"])

    def postprocess(
        self, outputs: Tensor, inputs: dict[str, Any], frames: Sequence[Any], settings: dict[str, Any]
    ) -> list[Results]:
        if inputs["faces"] is None:
            return [frame_results(frame, TASK, [], embeddings=outputs[i : i + 1]) for i, frame in enumerate(frames)]
        results, start = [], 0
        for frame, found in zip(frames, inputs["faces"], strict=True):
            end = start + len(found.scores)
            results.append(
                frame_results(
                    frame,
                    TASK,
                    self.names,
                    boxes=found.boxes,
                    scores=found.scores,
                    labels=found.labels,
                    landmarks=found.landmarks,
                    head_pose=found.head_pose,
                    embeddings=outputs[start:end],
                )
            )
            start = end
        return results


class NormalisedEmbedder(nn.Module):
    """The embedder for export: ``crops [B, 3, S, S] -> (embedding [B, D], features [B, D])``, the
    L2-normalised embedding and the raw features it normalises (the flip test adds the raw
    features of a crop and its mirror before normalising, :func:`~sightkit.models.embed_faces`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model(crops).float()
        return F.normalize(features, dim=1), features


# --------------------------------------------------------------------------- the task


class FaceTask(Task):
    """Face recognition (``sightkit train|eval|predict face``)."""

    name = TASK
    summary = "face embeddings (IResNet, MobileFaceNet) with ArcFace/CosFace margins, LFW verification"
    train_config, eval_config, predict_config = FaceConfig, FaceEvalConfig, FacePredictConfig

    def training_parts(self, config: FaceConfig) -> TrainingParts:
        embedder = build_embedder(config.model, config.embedding, config.imgsz)
        train_set, val_set, evaluate = build_datasets(config, embedder.input_size)
        num_classes = len(train_set.classes)
        # PartialFC reads its rank and shard when it is built (the runner joined the process group).
        head = PartialFC(
            embedder.num_features, num_classes, config.sample_rate, config.scale, config.m1, config.m2, config.m3
        )
        metadata = weights_metadata(config, embedder, num_classes)
        return TrainingParts(
            FaceTrainer(embedder, head), margin_criterion, train_set, val_set, collate_faces, evaluate, metadata
        )

    def load(self, weights: str | Path, metadata: dict[str, str], device: Any) -> FacePredictor:
        from safetensors.torch import load_file

        model = build_embedder(metadata["model"], int(metadata["embedding"]), int(metadata["imgsz"]))
        prefix = "embedder."
        state = {k[len(prefix) :]: v for k, v in load_file(str(weights)).items() if k.startswith(prefix)}
        load_model_state(model, state, what=str(weights))
        return FacePredictor(model, metadata, device)

    def eval_plan(self, config: FaceEvalConfig, predictor: FacePredictor) -> EvalPlan:
        folder = Path(config.data) / config.split
        pairs = read_lfw_pairs(Path(config.data) / config.pairs, folder)
        files, indices, same, folds = pair_files(pairs)
        dataset = FaceFolder(folder, predictor.imgsz, _inside(config.data, config.landmarks), files=files)
        evaluate = PairEvaluate(indices, same, folds, config.flip)

        def report(out: Path, console: Console) -> list[str]:
            records = [
                {"first": str(p.first), "second": str(p.second), "same": p.same, "fold": p.fold, "score": round(s, 6)}
                for p, s in zip(pairs, evaluate.scores.tolist(), strict=True)
            ]
            (out / "scores.json").write_text(json.dumps(records, indent=1))
            plot_roc(
                {predictor.name: roc_curve(evaluate.scores, same)}, out / "roc.png", title=f"ROC, {len(pairs)} pairs"
            )
            return ["scores.json", "roc.png"]

        title = f"verification, {len(pairs)} pairs of {Path(config.pairs).name}"
        return EvalPlan(dataset, collate_faces, evaluate, title, report, "eval_pairs")

    def predict_options(self, config: FacePredictConfig) -> dict[str, Any]:
        return {"detector": config.detector or None, "flip": config.flip}

    def onnx_predictor(self, model: nn.Module, metadata: dict[str, str], device: Any) -> FacePredictor:
        from sightkit.tasks.onnx_predictor import OnnxFacePredictor

        return OnnxFacePredictor(model, metadata, device)

    def export_spec(self, predictor: FacePredictor, imgsz: int = 0) -> ExportSpec:
        """The embedder with outputs ``embedding`` (L2-normalised) and ``features`` (raw,
        :class:`NormalisedEmbedder`), an example input ``crops`` [2, 3, S, S] (aligned,
        normalised), a dynamic batch axis. The crop side is fixed by the embedder's fully
        connected layer, so ``imgsz`` must be 0 or it."""
        if imgsz and imgsz != predictor.imgsz:
            raise ValueError(
                f"imgsz must be 0 or the embedder's crop side {predictor.imgsz} for face weights, got {imgsz}"
            )
        side = predictor.imgsz
        return ExportSpec(
            module=NormalisedEmbedder(predictor.model),
            name=predictor.name,
            inputs={"crops": example_input(2, 3, side, side)},
            output_names=["embedding", "features"],
            dynamic_shapes={"crops": {0: torch.export.Dim("batch", max=1024)}},
        )


FACE = register_task(FaceTask())


#: This task's modes (``sightkit.tasks.face.train(config)``): the runner's, which read the task from the config;
#: and ``sightkit.load`` for its weights only.
train, evaluate, predict, load_embedder = runner.train, runner.evaluate, runner.predict, FACE.load_weights
