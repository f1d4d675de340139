"""A gallery of enrolled faces for identification (1:N) and the thresholds that go with it.

``sightkit face enroll DIR`` embeds every image of an identity folder (``DIR/NAME/*.png``,
one folder per person) and saves the embeddings with their names to a ``.safetensors``
file. It also calibrates the decision thresholds: the impostor scores between images of
different enrolled people give, for each target false accept rate, the score above which
only that fraction of impostors lies. Large galleries have too many impostor pairs to hold
(``G^2 / 2``); then the thresholds come from :class:`~sightkit.eval.StreamingQuantile`, fed
one block of rows of the similarity matrix at a time.

Faces are found by a detector (``detector=mtcnn``: :class:`~sightkit.models.MTCNN` with the
weights of the facenet-pytorch wheel) and aligned by its 5 landmarks; or the images are
face crops, aligned by a landmarks JSON (keys relative to its folder, as the synthetic
datasets write it) or taken as already aligned and resized.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import Tensor
from torch.utils.data import DataLoader

from sightkit._api import export
from sightkit.config import DEVICE_HELP, setting
from sightkit.data.coco import read_image
from sightkit.data.faces import FaceFolder, collate_faces, normalise_face
from sightkit.eval.face import StreamingQuantile
from sightkit.models.face import embed_faces
from sightkit.models.mtcnn import load_mtcnn
from sightkit.ops.align import align_faces
from sightkit.tasks.common import image_paths, resolve_device
from sightkit.tasks.face import FacePredictor, load_embedder

#: FAR targets calibrated at enrolment.
GALLERY_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: Above this many impostor scores the thresholds are estimated by streaming instead of exactly.
EXACT_LIMIT = 4_000_000


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


DETECTORS = ("", "mtcnn")


@dataclass
class Faces:
    """The faces of one image: normalised aligned crops ``[K, 3, S, S]`` and, with a detector,
    their boxes ``[K, 4]`` (xyxy), landmarks ``[K, 5, 2]`` and scores ``[K]`` in the image."""

    path: Path
    crops: Tensor
    boxes: Tensor | None = None
    landmarks: Tensor | None = None
    scores: Tensor | None = None


def build_detector(detector: str, wheel: str = "") -> Any:
    """``None`` for face crops (``detector=''``), MTCNN with the wheel's weights (``mtcnn``), or
    the weights of ``sightkit train face_detect`` (a ``.safetensors`` path); each has ``detect``."""
    if detector.endswith(".safetensors"):
        from sightkit.tasks.face_detect import TrainedFaceDetector

        return TrainedFaceDetector(detector)
    if detector not in DETECTORS:
        raise ValueError(
            f"detector must be '' (the images are face crops), 'mtcnn' or a face_detect .safetensors file, "
            f"got {detector!r}"
        )
    return load_mtcnn(wheel) if detector == "mtcnn" else None


def find_faces(
    files: Sequence[Path], imgsz: int, detector: Any, landmarks: str = "", largest_only: bool = False
) -> list[Faces]:
    """Aligned, normalised crops of the faces in each file: every detected face (the largest
    with ``largest_only``), or the file itself as one crop without a detector."""
    if detector is None:
        folder = FaceFolder.from_files(files, imgsz, landmarks or None)
        return [Faces(path, folder[k][0][None]) for k, path in enumerate(files)]
    results = []
    for path in files:
        image = read_image(path).as_subclass(Tensor)
        (found,) = detector.detect(image[None])
        if largest_only and found["boxes"].shape[0] > 1:
            areas = (found["boxes"][:, 2:] - found["boxes"][:, :2]).prod(1)
            found = {k: v[areas.argmax()][None] for k, v in found.items()}
        count = found["boxes"].shape[0]
        # The detector's landmarks are continuous coordinates; alignment wants pixel centres at integers.
        crops, _ = align_faces(
            image[None].float(), found["landmarks"].cpu().double() - 0.5, imgsz, torch.zeros(count, dtype=torch.long)
        )
        results.append(
            Faces(path, normalise_face(crops), found["boxes"].cpu(), found["landmarks"].cpu(), found["scores"].cpu())
        )
    return results


@dataclass
class FaceFinding:
    """The keys of the face commands that say how faces are found in their images."""

    detector: str = setting("", "'' : the images are face crops; mtcnn or face_detect weights: find the faces")
    wheel: str = setting("", "facenet-pytorch wheel with MTCNN's weights ('' : runs/weights/)")
    landmarks: str = setting("", "landmarks JSON for aligning face crops ('' : the crops are aligned)")
    device: str = setting("", DEVICE_HELP)


@dataclass
class GalleryMatch(FaceFinding):
    """The keys of the commands that decide "same person" against a gallery."""

    gallery: str = setting("", "gallery written by sightkit face enroll (its calibrated thresholds give far=)")
    far: float = setting(1e-2, "accept a match above the gallery's threshold at this FAR")
    threshold: float = setting(math.nan, "accept above this cosine instead (nan: use far)")


@export("tasks.EnrollConfig")
@dataclass
class EnrollConfig(FaceFinding):
    """Settings of ``sightkit face enroll DIR`` (the largest face of each image with a detector)."""

    folder: str = setting("", "identity folders DIR/NAME/*.png, one per person")
    weights: str = setting("", "embedder weights written by sightkit train face")
    out: str = setting("", "gallery file ('' : DIR/gallery.safetensors)")
    batch: int = setting(64, "crops per forward pass")
    flip: bool = setting(True, "add the mirrored crop's embedding")


def embed_folder(loaded: FacePredictor, folder: FaceFolder, batch: int, flip: bool, console: Console) -> Tensor:
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
    loaded = load_embedder(config.weights, resolve_device(config.device))
    detector = build_detector(config.detector, config.wheel)
    if detector is None:
        folder = FaceFolder(config.folder, loaded.imgsz, config.landmarks or None)
        embeddings = embed_folder(loaded, folder, config.batch, config.flip, console)
        names = [folder.classes[label] for _, label in folder.samples]
    else:
        folder = FaceFolder(config.folder, loaded.imgsz)  # only its file list and names
        files = [path for path, _ in folder.samples]
        found = find_faces(files, loaded.imgsz, detector, largest_only=True)
        missing = [str(f.path) for f in found if f.crops.shape[0] == 0]
        if missing:
            console.print(f"[yellow]no face found in {len(missing)} images, left out:[/] {', '.join(missing[:5])}")
        kept = [(f, label) for f, (_, label) in zip(found, folder.samples, strict=True) if f.crops.shape[0]]
        if not kept:
            raise ValueError(f"the detector found no face in any image of {config.folder}")
        crops = torch.cat([f.crops for f, _ in kept])
        embeddings = embed_faces(loaded.model, crops, flip=config.flip, batch=config.batch).cpu()
        names = [folder.classes[label] for _, label in kept]
    gallery = FaceGallery(names, embeddings, str(config.weights), impostor_thresholds(embeddings, names))
    out = Path(config.out) if config.out else Path(config.folder) / "gallery.safetensors"
    gallery.save(out)
    shown = ", ".join(f"FAR {far:g}: {value:.3f}" for far, value in gallery.thresholds.items()) or "none (too few)"
    console.print(f"enrolled {len(set(names))} people ({len(names)} images) into [bold]{out}[/]")
    console.print(f"thresholds from the gallery's impostor pairs: {shown}")
    return gallery


@export("tasks.IdentifyConfig")
@dataclass
class IdentifyConfig(GalleryMatch):
    """Settings of ``sightkit face identify IMAGE`` (every face of the image with a detector)."""

    image: str = setting("", "an image, or a folder of them")
    top_k: int = setting(5, "candidates listed per face")
    out: str = setting("", "folder for identities.json and pictures ('' : print only)")


@export("tasks.identify_faces")
def identify(config: IdentifyConfig, console: Console | None = None) -> list[dict]:
    """Identify each face against the gallery: the best candidates and the decision; with a
    detector and ``out``, a picture per image with boxes, landmarks and names."""
    from sightkit.tasks.draw_faces import draw_faces

    console = console or Console()
    gallery = FaceGallery.load(config.gallery)
    loaded = load_embedder(gallery.weights, resolve_device(config.device))
    threshold = config.threshold if not math.isnan(config.threshold) else gallery.threshold(config.far)
    detector = build_detector(config.detector, config.wheel)
    found = find_faces(image_paths(config.image, argument="image"), loaded.imgsz, detector, config.landmarks)
    table = Table(title=f"identification against {len(set(gallery.names))} people (accept above {threshold:.3f})")
    for column in ("image", "face", "identity", "score", "next best"):
        table.add_column(column)
    out = Path(config.out) if config.out else None
    records = []
    for faces in found:
        embeddings = embed_faces(loaded.model, faces.crops).cpu() if faces.crops.shape[0] else faces.crops.new_zeros(0)
        candidates = gallery.search(embeddings, config.top_k) if faces.crops.shape[0] else []
        labels, accepted = [], []
        for k, options in enumerate(candidates):
            name, score = options[0]
            ok = score > threshold
            labels.append(f"{name} {score:.2f}" if ok else f"unknown {score:.2f}")
            accepted.append(ok)
            record = {"image": str(faces.path), "identity": name if ok else None, "candidates": options}
            if faces.boxes is not None and faces.landmarks is not None:
                record["box"] = [round(v, 2) for v in faces.boxes[k].tolist()]
                record["landmarks"] = [[round(v, 2) for v in point] for point in faces.landmarks[k].tolist()]
            records.append(record)
            runner_up = f"{options[1][0]} {options[1][1]:.3f}" if len(options) > 1 else ""
            table.add_row(faces.path.name, str(k), name if ok else f"unknown ({name}?)", f"{score:.3f}", runner_up)
        if not candidates:
            table.add_row(faces.path.name, "-", "no face found", "", "")
        if out is not None and faces.boxes is not None and faces.landmarks is not None:
            image = read_image(faces.path).as_subclass(Tensor)
            draw_faces(image, faces.boxes, faces.landmarks, labels, accepted, out / f"{faces.path.stem}.jpg")
    console.print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "identities.json").write_text(json.dumps(records, indent=2))
        console.print(f"wrote {out / 'identities.json'}" + (" and the pictures" if detector is not None else ""))
    return records


@export("tasks.VerifyConfig")
@dataclass
class VerifyConfig(GalleryMatch):
    """Settings of ``sightkit face verify IMG1 IMG2`` (the largest face of each with a detector)."""

    first: str = setting("", "the first image")
    second: str = setting("", "the second image")
    weights: str = setting("", "embedder weights ('' : the gallery's)")


@export("tasks.verify_faces")
def verify(config: VerifyConfig, console: Console | None = None) -> dict[str, float | bool]:
    """Cosine similarity of two faces and the same-person decision at the chosen threshold."""
    console = console or Console()
    gallery = FaceGallery.load(config.gallery) if config.gallery else None
    if math.isnan(config.threshold) and gallery is None:
        raise ValueError("give threshold= (a cosine) or gallery= (whose calibrated thresholds give far=)")
    weights = config.weights or (gallery.weights if gallery is not None else "")
    loaded = load_embedder(weights, resolve_device(config.device))
    threshold = config.threshold if not math.isnan(config.threshold) else gallery.threshold(config.far)
    files = [Path(config.first), Path(config.second)]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} does not exist")
    found = find_faces(files, loaded.imgsz, build_detector(config.detector, config.wheel), config.landmarks, True)
    for faces in found:
        if faces.crops.shape[0] == 0:
            raise ValueError(f"the detector found no face in {faces.path}")
    first, second = (embed_faces(loaded.model, faces.crops)[0].cpu() for faces in found)
    score = float(first @ second)
    same = score > threshold
    console.print(f"similarity {score:.4f}, threshold {threshold:.4f}: {'same person' if same else 'different people'}")
    return {"similarity": score, "threshold": threshold, "same": same}
