"""A gallery of enrolled faces for identification (1:N) and the thresholds that go with it.

``sightkit face enroll DIR`` embeds every image of an identity folder (``DIR/NAME/*.png``,
one folder per person) and saves the embeddings with their names to a ``.safetensors``
file. It also calibrates the decision thresholds: the impostor scores between images of
different enrolled people give, for each target false accept rate, the score above which
only that fraction of impostors lies. Large galleries have too many impostor pairs to hold
(``G^2 / 2``); then the thresholds come from :class:`~sightkit.eval.StreamingQuantile`, fed
one block of rows of the similarity matrix at a time.

Faces are given as crops: aligned by a landmarks JSON (keys relative to its folder, as the
synthetic datasets write it), or taken as already aligned and resized.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import Tensor
from torch.utils.data import DataLoader

from sightkit._api import export
from sightkit.data.faces import IMAGE_SUFFIXES, FaceFolder, collate_faces
from sightkit.eval.face import StreamingQuantile
from sightkit.models.face import embed_faces
from sightkit.tasks.face import LoadedEmbedder, _device, load_embedder

#: FAR targets calibrated at enrolment.
GALLERY_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: Above this many impostor scores the thresholds are estimated by streaming instead of exactly.
EXACT_LIMIT = 4_000_000


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@export("tasks.FaceGallery")
@dataclass
class FaceGallery:
    """Enrolled faces: one L2-normalised embedding per image and the name of its person.

    Attributes:
        names: ``[G]`` person of each entry.
        embeddings: ``[G, D]`` float32, unit length.
        weights: the embedder's weights file.
        thresholds: ``{far: threshold}`` calibrated on the gallery's impostor pairs (accept
            when score > threshold).
    """

    names: list[str]
    embeddings: Tensor
    weights: str
    thresholds: dict[float, float] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the gallery to a ``.safetensors`` file (names and thresholds in its metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "kind": "sightkit face gallery",
            "names": json.dumps(self.names),
            "weights": self.weights,
            "thresholds": json.dumps({repr(k): v for k, v in self.thresholds.items()}),
        }
        save_file({"embeddings": self.embeddings.contiguous().float()}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FaceGallery:
        """Read a gallery written by :meth:`save` (``sightkit face enroll``)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"gallery={str(path)!r} does not exist; make one with `sightkit face enroll DIR`")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("kind") != "sightkit face gallery":
                raise ValueError(f"gallery={str(path)!r} was not written by `sightkit face enroll`")
            embeddings = handle.get_tensor("embeddings")
        thresholds = {float(k): float(v) for k, v in json.loads(metadata["thresholds"]).items()}
        return cls(json.loads(metadata["names"]), embeddings, metadata["weights"], thresholds)

    def search(self, queries: Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each query embedding ``[N, D]``, the ``top_k`` people by their best entry's cosine."""
        identities = sorted(set(self.names))
        index = torch.tensor([identities.index(n) for n in self.names])
        similarity = queries.float() @ self.embeddings.T
        best = similarity.new_full((queries.shape[0], len(identities)), -math.inf)
        best.scatter_reduce_(1, index.expand_as(similarity), similarity, reduce="amax")
        scores, order = best.topk(min(top_k, len(identities)), dim=1)
        return [
            [(identities[i], float(s)) for i, s in zip(row_order.tolist(), row_scores.tolist(), strict=True)]
            for row_order, row_scores in zip(order, scores, strict=True)
        ]

    def threshold(self, far: float) -> float:
        """The calibrated threshold of the nearest FAR target at or below ``far``."""
        usable = [f for f in self.thresholds if f <= far * (1 + 1e-9)]
        if not usable:
            raise ValueError(
                f"far={far:g} is below every FAR the gallery could calibrate ({sorted(self.thresholds)}); "
                "enrol more people or give threshold= directly"
            )
        return self.thresholds[max(usable)]


@export("tasks.impostor_thresholds")
def impostor_thresholds(
    embeddings: Tensor,
    names: Sequence[str],
    fars: Sequence[float] = GALLERY_FARS,
    block: int = 1024,
    exact_limit: int = EXACT_LIMIT,
) -> dict[float, float]:
    """Thresholds at target FARs from the scores of every pair of entries of different people.

    Each pair counts once (``i < j``). The targets that the number of impostor pairs allows
    (at least ``1 / far`` pairs) are calibrated: exactly when there are at most ``exact_limit``
    pairs, else with one :class:`~sightkit.eval.StreamingQuantile` per target fed ``block``
    rows of the similarity matrix at a time (constant memory in the gallery size).
    """
    index = {name: k for k, name in enumerate(sorted(set(names)))}
    labels = torch.tensor([index[n] for n in names])
    count = embeddings.shape[0]
    same_pairs = sum(c * (c - 1) // 2 for c in torch.unique(labels, return_counts=True)[1].tolist())
    impostors = count * (count - 1) // 2 - same_pairs
    targets = [far for far in fars if impostors * far >= 1]
    if not targets:
        return {}

    def blocks() -> Iterator[Tensor]:
        for start in range(0, count, block):
            rows = embeddings[start : start + block].float() @ embeddings.float().T
            columns = torch.arange(count)
            upper = columns[None, :] > torch.arange(start, min(start + block, count))[:, None]
            different = labels[start : start + block, None] != labels[None, :]
            yield rows[upper & different].double()

    if impostors <= exact_limit:
        scores = torch.cat(list(blocks()))
        return {far: _exact_threshold(scores, far) for far in targets}
    estimators = {far: StreamingQuantile(1 - far) for far in targets}
    for scores in blocks():
        for estimator in estimators.values():
            estimator.update(scores)
    return {far: estimator.value for far, estimator in estimators.items()}


def _exact_threshold(scores: Tensor, far: float) -> float:
    allowed = math.floor(far * scores.numel() + 1e-9)
    return float(torch.topk(scores, allowed + 1).values[-1])


@export("tasks.EnrollConfig")
@dataclass
class EnrollConfig:
    """Settings of ``sightkit face enroll DIR``."""

    folder: str = field(default="", metadata=_help("identity folders DIR/NAME/*.png, one per person"))
    weights: str = field(default="", metadata=_help("embedder weights written by sightkit train face"))
    landmarks: str = field(default="", metadata=_help("landmarks JSON for alignment ('' : crops are aligned)"))
    out: str = field(default="", metadata=_help("gallery file ('' : DIR/gallery.safetensors)"))
    batch: int = field(default=64, metadata=_help("crops per forward pass"))
    flip: bool = field(default=True, metadata=_help("add the mirrored crop's embedding"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))


def embed_folder(loaded: LoadedEmbedder, folder: FaceFolder, batch: int, flip: bool, console: Console) -> Tensor:
    """Normalised embeddings ``[N, D]`` of every sample of ``folder``, in order."""
    loader = DataLoader(folder, batch_size=batch, collate_fn=collate_faces)
    parts = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("embedding", total=len(loader))
        for inputs, _ in loader:
            parts.append(embed_faces(loaded.model, inputs["images"], flip=flip).cpu())
            progress.advance(task)
    return torch.cat(parts)


@export("tasks.enroll_faces")
def enroll(config: EnrollConfig, console: Console | None = None) -> FaceGallery:
    """Embed every image of ``config.folder`` and save the gallery with its calibrated thresholds."""
    console = console or Console()
    if not config.folder:
        raise ValueError("the folder to enrol is required: sightkit face enroll DIR weights=...")
    loaded = load_embedder(config.weights, _device(config.device))
    folder = FaceFolder(config.folder, loaded.imgsz, config.landmarks or None)
    embeddings = embed_folder(loaded, folder, config.batch, config.flip, console)
    names = [folder.classes[label] for _, label in folder.samples]
    gallery = FaceGallery(names, embeddings, str(config.weights), impostor_thresholds(embeddings, names))
    out = Path(config.out) if config.out else Path(config.folder) / "gallery.safetensors"
    gallery.save(out)
    shown = ", ".join(f"FAR {far:g}: {value:.3f}" for far, value in gallery.thresholds.items()) or "none (too few)"
    console.print(f"enrolled {len(folder.classes)} people ({len(names)} images) into [bold]{out}[/]")
    console.print(f"thresholds from the gallery's impostor pairs: {shown}")
    return gallery


@export("tasks.IdentifyConfig")
@dataclass
class IdentifyConfig:
    """Settings of ``sightkit face identify IMAGE``."""

    image: str = field(default="", metadata=_help("a face image, or a folder of them"))
    gallery: str = field(default="", metadata=_help("gallery written by sightkit face enroll"))
    landmarks: str = field(default="", metadata=_help("landmarks JSON for alignment ('' : crops are aligned)"))
    far: float = field(default=1e-2, metadata=_help("accept a match above the gallery's threshold at this FAR"))
    threshold: float = field(default=math.nan, metadata=_help("accept above this cosine instead (nan: use far)"))
    top_k: int = field(default=5, metadata=_help("candidates listed per face"))
    out: str = field(default="", metadata=_help("write identities.json here ('' : print only)"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))


def _face_files(source: str) -> list[Path]:
    path = Path(source)
    if not source:
        raise ValueError("an image (or a folder of images) is required")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{source!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{source!r} does not exist")
    return [path]


def embed_files(loaded: LoadedEmbedder, files: Sequence[Path], landmarks: str, flip: bool = True) -> Tensor:
    """Normalised embeddings ``[N, D]`` of face image files (aligned by ``landmarks`` when given)."""
    folder = FaceFolder.from_files(files, loaded.imgsz, landmarks or None)
    inputs, _ = collate_faces([folder[i] for i in range(len(folder))])
    return embed_faces(loaded.model, inputs["images"], flip=flip).cpu()


@export("tasks.identify_faces")
def identify(config: IdentifyConfig, console: Console | None = None) -> list[dict]:
    """Identify each face image against the gallery: the best candidates and the decision."""
    console = console or Console()
    gallery = FaceGallery.load(config.gallery)
    loaded = load_embedder(gallery.weights, _device(config.device))
    threshold = config.threshold if not math.isnan(config.threshold) else gallery.threshold(config.far)
    files = _face_files(config.image)
    candidates = gallery.search(embed_files(loaded, files, config.landmarks), config.top_k)
    table = Table(title=f"identification against {len(set(gallery.names))} people (accept above {threshold:.3f})")
    for column in ("image", "identity", "score", "next best"):
        table.add_column(column)
    records = []
    for path, found in zip(files, candidates, strict=True):
        name, score = found[0]
        accepted = score > threshold
        records.append({"image": str(path), "identity": name if accepted else None, "candidates": found})
        runner_up = f"{found[1][0]} {found[1][1]:.3f}" if len(found) > 1 else ""
        table.add_row(path.name, name if accepted else f"unknown ({name}?)", f"{score:.3f}", runner_up)
    console.print(table)
    if config.out:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "identities.json").write_text(json.dumps(records, indent=2))
        console.print(f"wrote {out / 'identities.json'}")
    return records


@export("tasks.VerifyConfig")
@dataclass
class VerifyConfig:
    """Settings of ``sightkit face verify IMG1 IMG2``."""

    first: str = field(default="", metadata=_help("the first face image"))
    second: str = field(default="", metadata=_help("the second face image"))
    weights: str = field(default="", metadata=_help("embedder weights ('' : the gallery's)"))
    gallery: str = field(default="", metadata=_help("a gallery whose calibrated thresholds give far="))
    far: float = field(default=1e-2, metadata=_help("decide at the gallery's threshold for this FAR"))
    threshold: float = field(default=math.nan, metadata=_help("decide at this cosine instead (nan: use far)"))
    landmarks: str = field(default="", metadata=_help("landmarks JSON for alignment ('' : crops are aligned)"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))


@export("tasks.verify_faces")
def verify(config: VerifyConfig, console: Console | None = None) -> dict[str, float | bool]:
    """Cosine similarity of two faces and the same-person decision at the chosen threshold."""
    console = console or Console()
    gallery = FaceGallery.load(config.gallery) if config.gallery else None
    if math.isnan(config.threshold) and gallery is None:
        raise ValueError("give threshold= (a cosine) or gallery= (whose calibrated thresholds give far=)")
    weights = config.weights or (gallery.weights if gallery is not None else "")
    loaded = load_embedder(weights, _device(config.device))
    threshold = config.threshold if not math.isnan(config.threshold) else gallery.threshold(config.far)
    files = [Path(config.first), Path(config.second)]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} does not exist")
    first, second = embed_files(loaded, files, config.landmarks)
    score = float(first @ second)
    same = score > threshold
    console.print(f"similarity {score:.4f}, threshold {threshold:.4f}: {'same person' if same else 'different people'}")
    return {"similarity": score, "threshold": threshold, "same": same}
