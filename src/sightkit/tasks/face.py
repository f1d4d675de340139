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
the classifier; :func:`load_embedder` rebuilds the embedder alone from its metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sightkit._api import export
from sightkit.data.faces import FACE_MEAN, FACE_STD, FaceFolder, collate_faces, pair_files, read_lfw_pairs
from sightkit.engine.checkpoint import load_model_state
from sightkit.engine.distributed import all_gather_object, init_distributed
from sightkit.engine.trainer import TrainConfig, Trainer
from sightkit.eval.face import kfold_accuracy, plot_roc, roc_curve, tar_at_far
from sightkit.losses.partial_fc import PartialFC, exclude_from_ddp
from sightkit.models.face import embed_faces
from sightkit.models.registry import create_model, list_models
from sightkit.tasks.common import read_metadata, resolve_device
from sightkit.tasks.export import ExportSpec

TASK = "face"
#: FAR targets reported in the evaluation metrics (those the number of impostor pairs allows).
REPORTED_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@export("tasks.FaceConfig")
@dataclass
class FaceConfig(TrainConfig):
    """Settings of ``sightkit train face``: the engine's keys plus the recognition ones, with
    insightface's recipe as defaults (SGD lr 0.1, momentum 0.9, weight decay 5e-4, ArcFace
    s = 64, m = 0.5, embedding 512)."""

    model: str = field(default="iresnet18", metadata=_help("embedder (iresnet18/34/50/100, mobilefacenet, *_tiny)"))
    data: str = field(default="runs/data/faces/recognition", metadata=_help("folder with train/, test/, pairs.txt"))
    train_dir: str = field(default="train", metadata=_help("identity folders for training, inside data"))
    val_dir: str = field(default="test", metadata=_help("identity folders of the pairs' images, inside data"))
    pairs: str = field(default="pairs.txt", metadata=_help("LFW pairs file inside data ('' : no evaluation)"))
    landmarks: str = field(
        default="landmarks.json", metadata=_help("landmarks JSON inside data ('' : crops are aligned)")
    )
    imgsz: int = field(default=0, metadata=_help("side of the aligned crops (0: the model's input size)"))
    embedding: int = field(default=0, metadata=_help("embedding size (0: the model's, 512 or 128 for *_tiny)"))
    scale: float = field(default=64.0, metadata=_help("margin softmax scale s"))
    m1: float = field(default=1.0, metadata=_help("SphereFace multiplicative angular margin (1: none)"))
    m2: float = field(default=0.5, metadata=_help("ArcFace additive angular margin, radians"))
    m3: float = field(default=0.0, metadata=_help("CosFace additive cosine margin (e.g. 0.4 with m2=0)"))
    sample_rate: float = field(default=1.0, metadata=_help("Partial FC: fraction of class centres per step"))
    flip: bool = field(default=True, metadata=_help("add the mirrored crop's embedding at evaluation"))
    out: str = field(default="runs/face/train", metadata=_help("run folder (checkpoints, metrics, plots)"))
    epochs: int = field(default=20, metadata=_help("passes over the training data (0: steps decides)"))
    batch: int = field(default=128, metadata=_help("global batch of one optimiser step, all processes together"))
    lr: float = field(default=0.1, metadata=_help("base learning rate"))
    optimizer: str = field(default="sgd", metadata=_help("sgd or adamw"))
    weight_decay: float = field(default=5e-4, metadata=_help("weight decay (none on norms and biases)"))
    best_metric: str = field(default="accuracy", metadata=_help("metric that picks best.pt"))
    best_mode: str = field(default="max", metadata=_help("max or min: which way best_metric improves"))


@export("tasks.FaceEvalConfig")
@dataclass
class FaceEvalConfig:
    """Settings of ``sightkit eval face``: verification on LFW-style pairs."""

    weights: str = field(default="", metadata=_help("a .safetensors file written by sightkit train face"))
    data: str = field(default="runs/data/faces/recognition/test", metadata=_help("identity folders of the pairs"))
    pairs: str = field(default="runs/data/faces/recognition/pairs.txt", metadata=_help("LFW pairs.txt"))
    landmarks: str = field(
        default="runs/data/faces/recognition/landmarks.json", metadata=_help("landmarks JSON ('' : aligned crops)")
    )
    out: str = field(default="", metadata=_help("folder for metrics.json and roc.png ('' : next to weights)"))
    batch: int = field(default=64, metadata=_help("crops per forward pass"))
    flip: bool = field(default=True, metadata=_help("add the mirrored crop's embedding"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))
    workers: int = field(default=0, metadata=_help("DataLoader worker processes"))


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
    """``create_model(name)`` with the embedding size and crop side when given (0: the model's)."""
    if name not in list_models() or not name.startswith(("iresnet", "mobilefacenet")):
        choices = [n for n in list_models() if n.startswith(("iresnet", "mobilefacenet"))]
        raise ValueError(f"model={name!r} is not a face embedder; choose one of {', '.join(choices)}")
    overrides = {"num_features": embedding} if embedding else {}
    if imgsz:
        overrides["input_size"] = imgsz
    return create_model(name, **overrides)


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


@dataclass
class LoadedEmbedder:
    """An embedder rebuilt from a weights file, in eval mode, with its crop side."""

    model: nn.Module
    name: str
    imgsz: int
    mean: list[float]
    std: list[float]


@export("tasks.load_embedder")
def load_embedder(weights: str | Path, device: torch.device | str = "cpu") -> LoadedEmbedder:
    """Rebuild the embedder of a ``sightkit train face`` weights file (the classifier is left out).

    Raises:
        ValueError: the file was not written by ``sightkit train face`` or does not fit the
            model its metadata names.
    """
    from safetensors.torch import load_file

    meta = read_metadata(weights)
    if meta.get("task") != TASK or "model" not in meta or meta.get("kind", "embedder") != "embedder":
        raise ValueError(
            f"weights={str(weights)!r} were not written by `sightkit train face` (their metadata: "
            f"task={meta.get('task')!r}, model={meta.get('model')!r})"
        )
    model = build_embedder(meta["model"], int(meta["embedding"]), int(meta["imgsz"]))
    prefix = "embedder."
    state = {k[len(prefix) :]: v for k, v in load_file(str(weights)).items() if k.startswith(prefix)}
    load_model_state(model, state, what=str(weights))
    return LoadedEmbedder(
        model.to(device).eval(), meta["model"], int(meta["imgsz"]), json.loads(meta["mean"]), json.loads(meta["std"])
    )


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


# --------------------------------------------------------------------------- the modes


def build_datasets(config: FaceConfig, imgsz: int) -> tuple[FaceFolder, FaceFolder | None, PairEvaluate | None]:
    """The training identities, the pairs' images and their evaluator (None without pairs)."""
    data = Path(config.data)
    if not data.is_dir():
        raise FileNotFoundError(
            f"data={str(data)!r} is not a folder; make one with `sightkit data synth faces` (then "
            f"data=runs/data/faces/recognition) or point data= at a folder with train/, test/ and pairs.txt"
        )
    landmarks = _inside(config.data, config.landmarks)
    train = FaceFolder(data / config.train_dir, imgsz, landmarks, train=True)
    if not config.pairs:
        return train, None, None
    pairs = read_lfw_pairs(data / config.pairs, data / config.val_dir)
    files, indices, same, folds = pair_files(pairs)
    val = FaceFolder(data / config.val_dir, imgsz, landmarks, files=files)
    return train, val, PairEvaluate(indices, same, folds, config.flip)


@export("tasks.train_face")
def train(config: FaceConfig) -> dict[str, float]:
    """Train a face embedder as ``config`` says; returns the last evaluation's metrics.

    Writes ``config.out`` like every ``sightkit train`` run; ``best.safetensors`` is picked by
    the pairs' 10-fold accuracy (``best_metric=accuracy``).
    """
    # Join the process group first: PartialFC reads its rank and shard when it is built.
    init_distributed(config.device)
    # The Trainer seeds every RNG (seed + rank) only after the model exists: seed the
    # initialisation here, the same on every rank. The head then samples its centres from the
    # global RNG, which checkpoints hold per rank, so a resumed run draws the same samples.
    torch.manual_seed(config.seed)
    embedder = build_embedder(config.model, config.embedding, config.imgsz)
    train_set, val_set, evaluate_fn = build_datasets(config, embedder.input_size)
    num_classes = len(train_set.classes)
    head = PartialFC(
        embedder.num_features, num_classes, config.sample_rate, config.scale, config.m1, config.m2, config.m3
    )
    if val_set is None and config.best_metric == "accuracy":
        config.best_metric, config.best_mode = "val_loss", "min"
    trainer = Trainer(
        FaceTrainer(embedder, head),
        margin_criterion,
        train_set,
        config,
        val_data=val_set,
        collate_fn=collate_faces,
        evaluate=evaluate_fn,
        weights_metadata=weights_metadata(config, embedder, num_classes),
    )
    return trainer.fit()


def _metrics_table(metrics: dict[str, float], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    return table


@export("tasks.evaluate_face")
def evaluate(config: FaceEvalConfig, console: Console | None = None) -> dict[str, float]:
    """Verification metrics of a weights file on LFW-style pairs; writes ``metrics.json``,
    ``scores.json`` (per pair) and ``roc.png`` to ``config.out`` and prints the table."""
    console = console or Console()
    loaded = load_embedder(config.weights, resolve_device(config.device))
    pairs = read_lfw_pairs(config.pairs, config.data)
    files, indices, same, folds = pair_files(pairs)
    dataset = FaceFolder(config.data, loaded.imgsz, config.landmarks or None, files=files)
    loader = DataLoader(dataset, batch_size=config.batch, num_workers=config.workers, collate_fn=collate_faces)
    evaluate_fn = PairEvaluate(indices, same, folds, config.flip)
    with Progress(console=console, transient=True) as progress:
        metrics = evaluate_fn(loaded.model, loader, progress)
    scores = evaluate_fn.scores
    assert scores is not None  # set by the call above
    out = Path(config.out) if config.out else Path(config.weights).parent / "eval_pairs"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    records = [
        {"first": str(p.first), "second": str(p.second), "same": p.same, "fold": p.fold, "score": round(float(s), 6)}
        for p, s in zip(pairs, scores.tolist(), strict=True)
    ]
    (out / "scores.json").write_text(json.dumps(records, indent=1))
    plot_roc({loaded.name: roc_curve(scores, same)}, out / "roc.png", title=f"ROC, {len(pairs)} pairs")
    console.print(_metrics_table(metrics, f"verification, {len(pairs)} pairs of {Path(config.pairs).name}"))
    console.print(f"wrote {out / 'metrics.json'}, {out / 'scores.json'} and {out / 'roc.png'}")
    return metrics


class NormalisedEmbedder(nn.Module):
    """The embedder with L2-normalised output, for export: ``crops [B, 3, S, S] -> ([B, D],)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, crops: Tensor) -> tuple[Tensor]:
        return (F.normalize(self.model(crops), dim=1),)


def export_spec(weights: str | Path, imgsz: int = 0) -> ExportSpec:
    """What ``sightkit export onnx`` needs for face weights (detector weights go to
    :func:`sightkit.tasks.face_detect.export_spec`): the embedder with normalised output,
    an example input ``crops`` [1, 3, S, S] (aligned, normalised), a dynamic batch axis. The
    crop side is fixed by the embedder's fully connected layer, so ``imgsz`` must be 0 or it."""
    if read_metadata(weights).get("kind") == "detector":  # sightkit train face_detect wrote them
        from sightkit.tasks import face_detect

        return face_detect.export_spec(weights, imgsz)
    loaded = load_embedder(weights)
    if imgsz and imgsz != loaded.imgsz:
        raise ValueError(f"imgsz must be 0 or the embedder's crop side {loaded.imgsz} for face weights, got {imgsz}")
    side = loaded.imgsz
    return ExportSpec(
        module=NormalisedEmbedder(loaded.model),
        name=loaded.name,
        inputs={"crops": torch.randn(2, 3, side, side)},
        output_names=["embedding"],
        dynamic_shapes={"crops": {0: torch.export.Dim("batch", max=1024)}},
    )
