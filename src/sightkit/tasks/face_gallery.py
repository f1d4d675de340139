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

Every face gets a quality record (:func:`~sightkit.eval.face_quality`: size, head pose,
sharpness, detector score); a face below the ``min_face=``, ``max_yaw=``, ``min_sharpness=``
or ``min_score=`` keys is reported with its reasons and skipped: never enrolled, never
identified. A person's gallery entry is a *template*, the quality-weighted mean of their
image embeddings (:func:`~sightkit.eval.pool_templates`); the per-image embeddings are kept,
and ``match=best`` scores against the best of them instead (a gallery of independent images).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from sightkit._api import export
from sightkit.config import DEVICE_HELP, setting
from sightkit.data.coco import read_image
from sightkit.data.faces import FaceFolder, collate_faces, normalise_face
from sightkit.eval.face import StreamingQuantile
from sightkit.eval.face_quality import FaceQuality, QualityThresholds, face_quality
from sightkit.eval.face_template import MODES, pool_templates, quality_weights
from sightkit.models.face import embed_faces
from sightkit.models.mtcnn import load_mtcnn
from sightkit.ops.align import align_faces, arcface_template
from sightkit.tasks.common import image_paths, resolve_device
from sightkit.tasks.face import FacePredictor, load_embedder

#: FAR targets calibrated at enrolment.
GALLERY_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: Above this many impostor scores the thresholds are estimated by streaming instead of exactly.
EXACT_LIMIT = 4_000_000


@export("tasks.FaceGallery")
@dataclass
class FaceGallery:
    """Enrolled faces: one L2-normalised embedding per image and the name of its person, and one
    template per person (the ``pooling``-weighted mean of their embeddings, unit length).

    Attributes:
        names: ``[G]`` person of each entry.
        embeddings: ``[G, D]`` float32, unit length.
        weights: the embedder's weights file.
        thresholds: ``{far: threshold}`` calibrated on the gallery's impostor pairs of images
            (accept when score > threshold), for ``match="best"``.
        pooling: ``[G]`` pooling weight of each entry (:func:`~sightkit.eval.quality_weights`);
            ``None``: equal weights.
        template_thresholds: ``{far: threshold}`` calibrated on the scores of each image with
            the other people's templates, for ``match="template"``.
        templates: ``[T, D]`` one template per person of :attr:`people` (computed from the
            embeddings and ``pooling`` when not given).
        people: the ``T`` distinct names, sorted.
    """

    names: list[str]
    embeddings: Tensor
    weights: str
    thresholds: dict[float, float] = field(default_factory=dict)
    pooling: Tensor | None = None
    template_thresholds: dict[float, float] = field(default_factory=dict)
    templates: Tensor | None = None
    people: list[str] = field(init=False)

    def __post_init__(self) -> None:
        if self.templates is None:
            self.templates, self.people = pool_templates(self.embeddings.float(), self.names, self.pooling)
        else:
            self.people = sorted(set(self.names))
            if self.templates.shape != (len(self.people), self.embeddings.shape[1]):
                raise ValueError(
                    f"templates must be [T, D] = [{len(self.people)}, {self.embeddings.shape[1]}] (one per person), "
                    f"got {tuple(self.templates.shape)}"
                )

    def save(self, path: str | Path) -> Path:
        """Write the gallery to a ``.safetensors`` file (names and thresholds in its metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "kind": "sightkit face gallery",
            "names": json.dumps(self.names),
            "people": json.dumps(self.people),
            "weights": self.weights,
            "thresholds": json.dumps({repr(k): v for k, v in self.thresholds.items()}),
            "template_thresholds": json.dumps({repr(k): v for k, v in self.template_thresholds.items()}),
        }
        tensors = {"embeddings": self.embeddings.contiguous().float(), "templates": self.templates.contiguous().float()}
        if self.pooling is not None:
            tensors["pooling"] = self.pooling.contiguous().double()
        save_file(tensors, str(path), metadata=metadata)
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
            stored = set(handle.keys())
            embeddings = handle.get_tensor("embeddings")
            # Galleries written before templates have neither: the templates are pooled with equal weights.
            pooling = handle.get_tensor("pooling") if "pooling" in stored else None
            templates = handle.get_tensor("templates") if "templates" in stored else None

        def floats(key: str) -> dict[float, float]:
            return {float(k): float(v) for k, v in json.loads(metadata.get(key, "{}")).items()}

        return cls(
            json.loads(metadata["names"]), embeddings, metadata["weights"], floats("thresholds"), pooling,
            floats("template_thresholds"), templates,
        )  # fmt: skip

    def scores(self, queries: Tensor, match: str = "template") -> Tensor:
        """``[N, T]`` cosine of each query embedding ``[N, D]`` with each person of :attr:`people`:
        with their template (``match="template"``) or with their best image (``"best"``)."""
        if match not in MODES:
            raise ValueError(f"match must be one of {', '.join(MODES)}, got {match!r}")
        queries = F.normalize(queries.float(), dim=1)
        if match == "template":
            return queries @ self.templates.float().T
        position = {name: k for k, name in enumerate(self.people)}
        index = torch.tensor([position[n] for n in self.names])
        similarity = queries @ self.embeddings.float().T
        best = similarity.new_full((queries.shape[0], len(self.people)), -math.inf)
        return best.scatter_reduce_(1, index.expand_as(similarity), similarity, reduce="amax")

    def search(self, queries: Tensor, top_k: int = 5, match: str = "template") -> list[list[tuple[str, float]]]:
        """For each query embedding ``[N, D]``, the ``top_k`` people by cosine with their template
        (``match="template"``) or with their best entry (``"best"``), best first."""
        identities = self.people
        best = self.scores(queries, match)
        scores, order = best.topk(min(top_k, len(identities)), dim=1)
        return [
            [(identities[i], float(s)) for i, s in zip(row_order.tolist(), row_scores.tolist(), strict=True)]
            for row_order, row_scores in zip(order, scores, strict=True)
        ]

    def threshold(self, far: float, match: str = "best") -> float:
        """The calibrated threshold of the nearest FAR target at or below ``far``, for scores
        against the best image (``match="best"``) or against templates (``"template"``)."""
        if match not in MODES:
            raise ValueError(f"match must be one of {', '.join(MODES)}, got {match!r}")
        thresholds = self.thresholds if match == "best" else self.template_thresholds
        usable = [f for f in thresholds if f <= far * (1 + 1e-9)]
        if not usable:
            raise ValueError(
                f"far={far:g} is below every FAR the gallery could calibrate for match={match} ({sorted(thresholds)}); "
                "enrol more people or give threshold= directly"
            )
        return thresholds[max(usable)]


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

    def blocks() -> Iterator[Tensor]:
        for start in range(0, count, block):
            rows = embeddings[start : start + block].float() @ embeddings.float().T
            columns = torch.arange(count)
            upper = columns[None, :] > torch.arange(start, min(start + block, count))[:, None]
            different = labels[start : start + block, None] != labels[None, :]
            yield rows[upper & different].double()

    return _calibrate(blocks, impostors, fars, exact_limit)


@export("tasks.template_thresholds")
def template_thresholds(
    embeddings: Tensor,
    names: Sequence[str],
    templates: Tensor,
    fars: Sequence[float] = GALLERY_FARS,
    block: int = 1024,
    exact_limit: int = EXACT_LIMIT,
) -> dict[float, float]:
    """Thresholds at target FARs for scores against templates: from the cosine of every entry
    with the template of every other person (``templates [T, D]``, one per sorted distinct
    name), calibrated as :func:`impostor_thresholds` (exactly, or streamed past ``exact_limit``).

    An image scores higher against a pooled template than against another single image of the
    same stranger, so thresholds calibrated on image pairs would accept too many impostors here.
    """
    people = sorted(set(names))
    if templates.shape[0] != len(people):
        raise ValueError(f"templates must have one row per person ({len(people)}), got {templates.shape[0]}")
    position = {name: k for k, name in enumerate(people)}
    labels = torch.tensor([position[n] for n in names])
    count = embeddings.shape[0]

    def blocks() -> Iterator[Tensor]:
        for start in range(0, count, block):
            rows = embeddings[start : start + block].float() @ templates.float().T
            yield rows[labels[start : start + block, None] != torch.arange(len(people))[None, :]].double()

    return _calibrate(blocks, count * (len(people) - 1), fars, exact_limit)


def _calibrate(
    blocks: Callable[[], Iterator[Tensor]], impostors: int, fars: Sequence[float], exact_limit: int
) -> dict[float, float]:
    """``{far: threshold}`` for the targets that ``impostors`` scores (yielded by ``blocks()``) allow."""
    targets = [far for far in fars if impostors * far >= 1]
    if not targets:
        return {}
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
    """The faces of one image: normalised aligned crops ``[K, 3, S, S]``, their quality and, with
    a detector, their boxes ``[K, 4]`` (xyxy), landmarks ``[K, 5, 2]`` and scores ``[K]`` in the image."""

    path: Path
    crops: Tensor
    quality: FaceQuality
    boxes: Tensor | None = None
    landmarks: Tensor | None = None
    scores: Tensor | None = None

    def record(self, k: int) -> dict[str, Any]:
        """Where face ``k`` is (with a detector) and its quality, for the JSON outputs."""
        record: dict[str, Any] = {"image": str(self.path)}
        if self.boxes is not None and self.landmarks is not None:
            record["box"] = [round(v, 2) for v in self.boxes[k].tolist()]
            record["landmarks"] = [[round(v, 2) for v in point] for point in self.landmarks[k].tolist()]
        record["quality"] = {
            key: None if value is None else round(value, 4) for key, value in self.quality.to_dicts()[k].items()
        }
        return record


def build_detector(detector: str, wheel: str = "") -> Any:
    """``None`` for face crops (``detector=''``), MTCNN with the wheel's weights (``mtcnn``), or
    the weights of ``sightkit train face_detect`` (a ``.safetensors`` path, or the ``.onnx`` file
    ``sightkit export onnx`` made of them); each has ``detect``."""
    if detector.endswith((".safetensors", ".onnx")):
        from sightkit.tasks.face_detect import TrainedFaceDetector

        return TrainedFaceDetector(detector)
    if detector not in DETECTORS:
        raise ValueError(
            f"detector must be '' (the images are face crops), 'mtcnn' or a face_detect .safetensors or .onnx file, "
            f"got {detector!r}"
        )
    return load_mtcnn(wheel) if detector == "mtcnn" else None


def crop_landmarks(image: Tensor) -> Tensor:
    """``[5, 2]`` landmarks of an aligned face crop ``[3, H, W]`` without its own: ArcFace's
    template (continuous coordinates) stretched over the image, as :class:`~sightkit.data.FaceFolder` takes them."""
    height, width = image.shape[-2:]
    return (arcface_template(112) + 0.5) * torch.tensor([width / 112, height / 112])


def crop_quality(path: Path, landmarks: dict[str, Tensor]) -> FaceQuality:
    """The quality of a face crop file, aligned by its entry of ``landmarks`` (a read landmarks JSON) or
    taken as aligned; no detector score."""
    image = read_image(path).as_subclass(Tensor)
    marks = landmarks.get(str(path.resolve()))
    return face_quality(image[None], (crop_landmarks(image) if marks is None else marks)[None])


def cat_quality(records: Sequence[FaceQuality]) -> FaceQuality:
    """The quality records of several images (at least one), one after the other."""
    return FaceQuality(*(torch.cat([getattr(r, f.name) for r in records]) for f in fields(FaceQuality)))


def find_faces(
    files: Sequence[Path], imgsz: int, detector: Any, landmarks: str = "", largest_only: bool = False
) -> list[Faces]:
    """Aligned, normalised crops of the faces in each file, with their quality: every detected
    face (the largest with ``largest_only``) and its head pose, or the file itself as one crop
    without a detector."""
    if detector is None:
        folder = FaceFolder.from_files(files, imgsz, landmarks or None)
        return [Faces(path, folder[k][0][None], crop_quality(path, folder.landmarks)) for k, path in enumerate(files)]
    results = []
    for path in files:
        image = read_image(path).as_subclass(Tensor)
        (found,) = detector.detect(image[None])
        found = {key: value.cpu() for key, value in found.items()}
        if largest_only and found["boxes"].shape[0] > 1:
            areas = (found["boxes"][:, 2:] - found["boxes"][:, :2]).prod(1)
            found = {k: v[areas.argmax()][None] for k, v in found.items()}
        count = found["boxes"].shape[0]
        index = torch.zeros(count, dtype=torch.long)
        # The detector's landmarks are continuous coordinates; alignment wants pixel centres at integers.
        crops = torch.zeros(0, 3, imgsz, imgsz)  # no face: nothing to align (the warp refuses an empty batch)
        if count:
            crops, _ = align_faces(image[None].float(), found["landmarks"].double() - 0.5, imgsz, index)
        quality = face_quality(image[None], found["landmarks"].float(), index, found["scores"].float())
        results.append(Faces(path, normalise_face(crops), quality, found["boxes"], found["landmarks"], found["scores"]))
    return results


@dataclass
class FaceFinding:
    """The keys of the face commands that say how faces are found in their images, and which
    are good enough to use (:class:`~sightkit.eval.QualityThresholds`)."""

    detector: str = setting("", "'' : the images are face crops; mtcnn or face_detect weights: find the faces")
    wheel: str = setting("", "facenet-pytorch wheel with MTCNN's weights ('' : runs/weights/)")
    landmarks: str = setting("", "landmarks JSON for aligning face crops ('' : the crops are aligned)")
    device: str = setting("", DEVICE_HELP)
    min_face: float = setting(0.0, "skip faces smaller than this many pixels (aligned side)")
    max_yaw: float = setting(math.inf, "skip faces turned more than this, radians")
    min_sharpness: float = setting(0.0, "skip faces whose Laplacian variance is lower")
    min_score: float = setting(0.0, "skip faces whose detector score is lower")

    def gate(self) -> QualityThresholds:
        """The quality thresholds of these keys."""
        return QualityThresholds(self.min_face, self.max_yaw, self.min_sharpness, self.min_score)


@dataclass
class GalleryMatch(FaceFinding):
    """The keys of the commands that decide "same person" against a gallery."""

    gallery: str = setting("", "gallery written by sightkit face enroll (its calibrated thresholds give far=)")
    far: float = setting(1e-2, "accept a match above the gallery's threshold at this FAR")
    threshold: float = setting(math.nan, "accept above this cosine instead (nan: use far)")
    match: str = setting("template", "score against each person's template, or best: their best image")

    def decision_threshold(self, gallery: FaceGallery | None) -> float:
        """``threshold``, else the gallery's calibrated one at ``far`` for ``match``."""
        if self.match not in MODES:
            raise ValueError(f"match must be one of {', '.join(MODES)}, got {self.match!r}")
        if not math.isnan(self.threshold):
            return self.threshold
        if gallery is None:
            raise ValueError("give threshold= (a cosine) or gallery= (whose calibrated thresholds give far=)")
        return gallery.threshold(self.far, self.match)


@export("tasks.EnrollConfig")
@dataclass
class EnrollConfig(FaceFinding):
    """Settings of ``sightkit face enroll DIR`` (the largest face of each image with a detector)."""

    folder: str = setting("", "identity folders DIR/NAME/*.png, one per person")
    weights: str = setting("", "embedder weights written by sightkit train face")
    out: str = setting("", "gallery file ('' : DIR/gallery.safetensors); the faces' quality goes next to it (.json)")
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


def _print_skipped(console: Console, records: Sequence[dict[str, Any]]) -> None:
    skipped = [r for r in records if r.get("skipped")]
    if skipped:
        console.print(f"[yellow]{len(skipped)} faces below the quality thresholds, skipped:[/]")
        for record in skipped[:10]:
            console.print(f"  {record['image']}: {'; '.join(record['skipped'])}", markup=False)
        if len(skipped) > 10:
            console.print(f"  ... and {len(skipped) - 10} more")


@export("tasks.enroll_faces")
def enroll(config: EnrollConfig, console: Console | None = None) -> FaceGallery:
    """Embed every image of ``config.folder`` whose face passes the quality thresholds, pool each
    person's into a quality-weighted template, and save the gallery with its calibrated thresholds;
    ``OUT.json`` lists every face with its quality and, for a skipped one, the reasons."""
    console = console or Console()
    if not config.folder:
        raise ValueError("the folder to enrol is required: sightkit face enroll DIR weights=...")
    gate = config.gate()
    loaded = load_embedder(config.weights, resolve_device(config.device))
    detector = build_detector(config.detector, config.wheel)
    if detector is None:
        folder = FaceFolder(config.folder, loaded.imgsz, config.landmarks or None)
        found = [(path, label, crop_quality(path, folder.landmarks)) for path, label in folder.samples]
    else:
        folder = FaceFolder(config.folder, loaded.imgsz)  # only its file list and names
        faces = find_faces([path for path, _ in folder.samples], loaded.imgsz, detector, largest_only=True)
        missing = [str(f.path) for f in faces if f.crops.shape[0] == 0]
        if missing:
            left_out = (f"no face found in {len(missing)} images, left out:", "yellow")
            console.print(Text.assemble(left_out, " ", ", ".join(missing[:5])))
        found = [(f.path, label, f) for f, (_, label) in zip(faces, folder.samples, strict=True) if f.crops.shape[0]]
    records, kept = [], []
    for path, label, item in found:
        quality = item if isinstance(item, FaceQuality) else item.quality
        (reasons,) = gate.failures(quality)
        with_crop = Faces(path, torch.zeros(0), quality) if isinstance(item, FaceQuality) else item
        record = {**with_crop.record(0), "identity": folder.classes[label], "skipped": reasons}
        record["weight"] = None if reasons else round(float(quality_weights(quality)[0]), 6)
        records.append(record)
        if not reasons:
            kept.append((path, label, item, quality))
    _print_skipped(console, records)
    if not kept:
        raise ValueError(
            f"no face of {config.folder} passes the quality thresholds ({gate}) or was found; "
            "lower min_face=, max_yaw=, min_sharpness= or min_score="
        )
    if detector is None:
        folder.samples = [(path, label) for path, label, _, _ in kept]
        embeddings = embed_folder(loaded, folder, config.batch, config.flip, console)
    else:
        crops = torch.cat([item.crops for _, _, item, _ in kept])
        embeddings = embed_faces(loaded.model, crops, flip=config.flip, batch=config.batch).cpu()
    names = [folder.classes[label] for _, label, _, _ in kept]
    pooling = quality_weights(cat_quality([quality for _, _, _, quality in kept]))
    templates, _ = pool_templates(embeddings, names, pooling)
    gallery = FaceGallery(
        names, embeddings, str(config.weights), impostor_thresholds(embeddings, names), pooling,
        template_thresholds(embeddings, names, templates), templates,
    )  # fmt: skip
    out = Path(config.out) if config.out else Path(config.folder) / "gallery.safetensors"
    gallery.save(out)
    out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    shown = ", ".join(f"FAR {far:g}: {value:.3f}" for far, value in gallery.template_thresholds.items())
    console.print(Text.assemble(f"enrolled {len(set(names))} people ({len(names)} images) into ", (str(out), "bold")))
    console.print(f"template thresholds from the gallery's impostor scores: {shown or 'none (too few)'}")
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
    """Identify each face against the gallery (by template, or best image with ``match=best``):
    the best candidates and the decision, the face's quality, and for a face below the quality
    thresholds the reasons it was skipped; with a detector and ``out``, a picture per image with
    boxes, landmarks, head pose and names."""
    from sightkit.tasks.draw_faces import draw_faces

    console = console or Console()
    gate = config.gate()
    gallery = FaceGallery.load(config.gallery)
    threshold = config.decision_threshold(gallery)
    loaded = load_embedder(gallery.weights, resolve_device(config.device))
    detector = build_detector(config.detector, config.wheel)
    found = find_faces(image_paths(config.image, argument="image"), loaded.imgsz, detector, config.landmarks)
    title = f"identification against {len(gallery.people)} people by {config.match} (accept above {threshold:.3f})"
    table = Table(title=title)
    for column in ("image", "face", "identity", "score", "next best"):
        table.add_column(column)
    out = Path(config.out) if config.out else None
    records = []
    for faces in found:
        reasons = gate.failures(faces.quality)
        usable = torch.tensor([not r for r in reasons], dtype=torch.bool)
        embeddings = embed_faces(loaded.model, faces.crops[usable]).cpu() if usable.any() else None
        candidates = iter(gallery.search(embeddings, config.top_k, config.match) if embeddings is not None else [])
        labels, accepted = [], []
        for k, why in enumerate(reasons):
            if why:
                labels.append(f"skipped: {why[0]}")
                accepted.append(False)
                records.append({**faces.record(k), "identity": None, "candidates": [], "skipped": why})
                table.add_row(Text(faces.path.name), str(k), "skipped", "", "; ".join(why))
                continue
            options = next(candidates)
            name, score = options[0]
            ok = score > threshold
            labels.append(f"{name} {score:.2f}" if ok else f"unknown {score:.2f}")
            accepted.append(ok)
            records.append({**faces.record(k), "identity": name if ok else None, "candidates": options, "skipped": []})
            runner_up = f"{options[1][0]} {options[1][1]:.3f}" if len(options) > 1 else ""
            who = name if ok else f"unknown ({name}?)"
            # Text, not markup: file and people's names may hold brackets.
            table.add_row(Text(faces.path.name), str(k), Text(who), f"{score:.3f}", Text(runner_up))
        if not reasons:
            table.add_row(Text(faces.path.name), "-", "no face found", "", "")
        if out is not None and faces.boxes is not None and faces.landmarks is not None:
            image = read_image(faces.path).as_subclass(Tensor)
            poses = torch.stack([faces.quality.yaw, faces.quality.pitch, faces.quality.roll], 1)
            draw_faces(image, faces.boxes, faces.landmarks, labels, accepted, out / f"{faces.path.stem}.jpg", poses)
    console.print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "identities.json").write_text(json.dumps(records, indent=2))
        pictures = " and the pictures" if detector is not None else ""
        console.print(f"wrote {out / 'identities.json'}{pictures}", markup=False)
    return records


@export("tasks.VerifyConfig")
@dataclass
class VerifyConfig(GalleryMatch):
    """Settings of ``sightkit face verify IMG1 IMG2`` or ``sightkit face verify IMG name=PERSON``
    (the largest face of each image with a detector)."""

    first: str = setting("", "the first image")
    second: str = setting("", "the second image ('' : give name=)")
    name: str = setting("", "an enrolled person of gallery= to compare the first face with, instead of second")
    weights: str = setting("", "embedder weights ('' : the gallery's)")


@export("tasks.verify_faces")
def verify(config: VerifyConfig, console: Console | None = None) -> dict[str, Any]:
    """Cosine similarity of two faces, or of a face with an enrolled person (their template, or
    their best image with ``match=best``), and the same-person decision at the chosen threshold.
    A face below the quality thresholds is an error that gives the reasons."""
    console = console or Console()
    if bool(config.second) == bool(config.name):
        raise ValueError(f"give exactly one of second= (an image) or name= (an enrolled person), got "
                         f"second={config.second!r} and name={config.name!r}")  # fmt: skip
    gallery = FaceGallery.load(config.gallery) if config.gallery else None
    if config.name and gallery is None:
        raise ValueError(f"name={config.name!r} needs gallery= (the gallery the person is enrolled in)")
    threshold = config.decision_threshold(gallery)
    weights = config.weights or (gallery.weights if gallery is not None else "")
    loaded = load_embedder(weights, resolve_device(config.device))
    files = [Path(config.first)] + ([Path(config.second)] if config.second else [])
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} does not exist")
    found = find_faces(files, loaded.imgsz, build_detector(config.detector, config.wheel), config.landmarks, True)
    for faces in found:
        if faces.crops.shape[0] == 0:
            raise ValueError(f"the detector found no face in {faces.path}")
        (reasons,) = config.gate().failures(faces.quality)
        if reasons:
            raise ValueError(f"the face of {faces.path} is below the quality thresholds: {'; '.join(reasons)}")
    vectors = [embed_faces(loaded.model, faces.crops)[0].cpu() for faces in found]
    if config.name:
        if config.name not in gallery.people:
            raise ValueError(f"name={config.name!r} is not enrolled in {config.gallery} ({len(gallery.people)} people)")
        score = float(gallery.scores(vectors[0][None], config.match)[0, gallery.people.index(config.name)])
    else:
        score = float(vectors[0] @ vectors[1])
    same = score > threshold
    console.print(f"similarity {score:.4f}, threshold {threshold:.4f}: {'same person' if same else 'different people'}")
    return {"similarity": score, "threshold": threshold, "same": same, "faces": [f.record(0) for f in found]}
