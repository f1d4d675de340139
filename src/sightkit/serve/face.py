"""The face endpoints: enrol, identify, verify, delete and list, on a persistent SQLite gallery.

Where the faces are:

- with a ``landmarks`` form field (a JSON list with five ``[x, y]`` points per image, or
  ``null``, in the continuous pixel convention of the synthetic datasets), each image is
  aligned to the ArcFace template by its points; the points must lie in the image and not
  coincide;
- else, with ``face_detector=`` (``mtcnn`` or ``sightkit train face_detect`` weights, as
  ``sightkit face identify detector=`` takes), the detector finds the faces and aligns each
  by its own 5 landmarks;
- else the uploads are taken as aligned face crops and resized
  (:func:`sightkit.data.faces.face_crop`), as the command line does without a detector.

An image in which the detector finds no face answers ``faces: []`` from identify (a 200: "no
face found" is an answer), and a 422 ``no_face`` from enrol and verify, which need one face
per image (the largest, as the command line takes). Embeddings are the flip-averaged,
L2-normalised ones of :func:`sightkit.models.embed_faces`, computed through the server's
dynamic batcher; decisions accept a match when its cosine similarity is above
``face_threshold``, as the command line does.

Every face gets the quality record of ``sightkit face`` (:func:`sightkit.eval.face_quality`:
size, head pose, sharpness, detector score). A face below the server's ``min_face``,
``max_yaw``, ``min_sharpness`` or ``min_score`` is skipped with its reasons: left out of an
enrolment (``skipped`` in the answer; a 422 ``poor_face`` when no image is left), answered
without matches by identify, a 422 ``poor_face`` from verify. Identify and verify score each
person by their template, the quality-weighted mean of their enrolled faces
(``?match=template``, the default), or by their best enrolled face (``?match=best``).

``POST /v1/face/enroll`` and ``DELETE /v1/face/{name}`` change the gallery and need the
``X-API-Key`` header when the server has a key; with ``protect_reads`` the others do too.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import torch
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from sightkit.data.faces import face_crop, normalise_face
from sightkit.eval.face_quality import FaceQuality, QualityThresholds, face_quality
from sightkit.eval.face_template import quality_weights
from sightkit.ops.align import align_faces
from sightkit.serve.errors import ServeError
from sightkit.serve.gallery import SQLiteGallery, check_name
from sightkit.serve.predict import file_sha256
from sightkit.serve.schemas import (
    DeleteResponse,
    EnrollResponse,
    GalleryResponse,
    IdentifyResponse,
    VerifyResponse,
)
from sightkit.tasks.face import load_embedder
from sightkit.tasks.face_gallery import build_detector, crop_landmarks

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

#: Smallest extent, in pixels, of a face's five landmarks: closer points are one point for
#: alignment (no rotation or scale can be solved from them) and no usable face.
MIN_LANDMARK_SPREAD = 1.0


@dataclass
class Face:
    """One face of an upload: its normalised aligned crop ``[3, S, S]``, where it was found
    (``box`` xyxy and ``score`` from the detector, ``landmarks`` [5, 2] when known), its
    ``quality`` record, pooling ``weight`` and the reasons it is ``skipped`` (``[]``: usable)."""

    crop: Tensor
    box: list[float] | None = None
    landmarks: list[list[float]] | None = None
    score: float | None = None
    quality: dict[str, float | None] | None = None
    weight: float = 1.0
    skipped: list[str] = field(default_factory=list)

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1]) if self.box is not None else 0.0

    def where(self) -> dict[str, Any]:
        return {
            "box": self.box, "landmarks": self.landmarks, "detection_score": self.score, "quality": self.quality,
            "skipped": self.skipped,
        }  # fmt: skip

    def rated(self, quality: FaceQuality, k: int, thresholds: QualityThresholds) -> Face:
        """This face with face ``k`` of ``quality``: its record (4 decimals), weight and failures."""
        self.quality = {key: None if value is None else round(value, 4) for key, value in quality.to_dicts()[k].items()}
        self.weight = float(quality_weights(quality)[k])
        self.skipped = thresholds.failures(quality)[k]
        return self


def _rounded(values: Tensor) -> list[Any]:
    return torch.round(values.double(), decimals=2).tolist()


class FaceService:
    """A face embedder rebuilt from ``sightkit train face`` weights and its gallery.

    Args:
        weights: the embedder's ``.safetensors`` file.
        gallery: the SQLite file (created when missing; must hold this embedder's faces).
        device: where the embedder runs.
        threshold: cosine similarity above which two faces are taken for one person.
        detector: ``''`` (uploads are face crops), ``mtcnn`` or face_detect weights (module docstring).
        wheel: the facenet-pytorch wheel with MTCNN's weights (``''``: ``runs/weights/``).
        quality: the thresholds below which a face is skipped (default: none).

    Raises:
        ValueError: the gallery file cannot be created or written.
    """

    def __init__(
        self,
        weights: str | Path,
        gallery: str | Path,
        device: torch.device | str = "cpu",
        threshold: float = 0.4,
        detector: str = "",
        wheel: str = "",
        quality: QualityThresholds | None = None,
    ) -> None:
        self.quality = quality if quality is not None else QualityThresholds()
        self.loaded = load_embedder(weights, device)
        self.weights_sha256 = file_sha256(weights)
        self.embedding = int(self.loaded.model.num_features)
        self.threshold = threshold
        self.detector_name = detector
        self.detector = build_detector(detector, wheel)
        if self.detector is not None and hasattr(self.detector, "to"):
            self.detector = self.detector.to(device)
        # The hash ties the gallery to these weights: another model's embeddings are not comparable.
        try:
            self.gallery = SQLiteGallery(gallery, f"{self.loaded.name} sha256:{self.weights_sha256}", self.embedding)
        except (OSError, sqlite3.Error) as error:
            raise ValueError(f"gallery={str(gallery)!r} cannot be created or written: {error}") from None

    @property
    def name(self) -> str:
        return self.loaded.name

    def info(self) -> dict[str, Any]:
        return {
            "model": self.loaded.name,
            "imgsz": self.loaded.imgsz,
            "embedding": self.embedding,
            "weights_sha256": self.weights_sha256,
            "threshold": self.threshold,
            "detector": self.detector_name or None,
            "identities": 0,
        }

    def crop(self, image: Tensor, landmarks: Tensor | None) -> Face:
        """The face of a uint8 image ``[3, H, W]`` aligned by its ``landmarks`` ``[5, 2]``, or the
        image itself resized (a crop); normalised for the embedder."""
        crop = normalise_face(face_crop(image, self.loaded.imgsz, landmarks), self.loaded.mean, self.loaded.std)
        # A crop without points is rated as `sightkit face` rates it: aligned, ArcFace's template stretched over it.
        quality = face_quality(image[None], (crop_landmarks(image) if landmarks is None else landmarks)[None])
        if landmarks is not None:
            return Face(crop, landmarks=_rounded(landmarks)).rated(quality, 0, self.quality)
        box = [0.0, 0.0, float(image.shape[-1]), float(image.shape[-2])]
        return Face(crop, box=box).rated(quality, 0, self.quality)

    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """The detector's faces in each uint8 image ``[3, H, W]`` (one at a time: sizes differ)."""
        found = []
        for image in images:
            (faces,) = self.detector.detect(image[None])
            found.append({key: value.detach().cpu() for key, value in faces.items()})
        return found

    def align(self, image: Tensor, found: dict[str, Tensor]) -> list[Face]:
        """The detected faces aligned by their landmarks, by decreasing score; faces whose
        landmarks coincide (no face: nothing to align) are left out."""
        spread = (found["landmarks"].amax(1) - found["landmarks"].amin(1)).amax(1)
        keep = (spread >= MIN_LANDMARK_SPREAD) & torch.isfinite(found["landmarks"]).flatten(1).all(1)
        boxes, landmarks, scores = found["boxes"][keep], found["landmarks"][keep], found["scores"][keep]
        if not keep.any():
            return []
        # The detector's landmarks are continuous coordinates; alignment wants pixel centres at integers.
        crops, _ = align_faces(
            image[None].float(), landmarks.double() - 0.5, self.loaded.imgsz, torch.zeros(len(boxes), dtype=torch.long)
        )
        crops = normalise_face(crops, self.loaded.mean, self.loaded.std)
        quality = face_quality(
            image[None], landmarks.float(), torch.zeros(len(boxes), dtype=torch.long), scores.float()
        )
        return [
            Face(crop, _rounded(box), _rounded(points), round(float(score), 4)).rated(quality, k, self.quality)
            for k, (crop, box, points, score) in enumerate(zip(crops, boxes, landmarks, scores, strict=True))
        ]

    def infer(self, crops: list[Tensor]) -> list[Tensor]:
        """The unit embedding ``[D]`` of each crop (flip-averaged), by the embedder's predictor."""
        return list(self.loaded.forward({"crops": torch.stack(crops).to(self.loaded.device), "flip": True}).cpu())

    def close(self) -> None:
        self.gallery.close()


def _invalid(message: str) -> ServeError:
    return ServeError(422, "invalid_request", message)


def parse_landmarks(text: str | None, count: int) -> list[list[list[float]] | None]:
    """The ``landmarks`` form field: ``None``/empty (no points) or a JSON list of ``count``
    entries, each five ``[x, y]`` number pairs or ``null``. Where the points lie is checked
    against each image by :func:`check_landmarks`."""
    if not text:
        return [None] * count
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: brackets nested thousands deep
        raise _invalid(f"landmarks: not JSON ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(value, list) or len(value) != count:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise _invalid(f"landmarks: expected a list of {count} entries (one per image), got {got}")

    def is_number(x: object) -> bool:  # bool is an int to Python, not a coordinate
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    marks: list[list[list[float]] | None] = []
    for index, entry in enumerate(value):
        if entry is None:
            marks.append(None)
            continue
        if not (
            isinstance(entry, list)
            and len(entry) == 5
            and all(isinstance(p, list) and len(p) == 2 and all(map(is_number, p)) for p in entry)
        ):
            shown = json.dumps(entry)
            shown = shown if len(shown) <= 200 else shown[:200] + "..."
            raise _invalid(f"landmarks[{index}]: expected five [x, y] pairs of finite numbers, got {shown}")
        marks.append([[float(x), float(y)] for x, y in entry])
    return marks


def check_landmarks(points: list[list[float]], index: int, name: str, width: int, height: int) -> Tensor:
    """``points`` as a ``[5, 2]`` tensor once they lie in the ``width`` x ``height`` image
    (continuous coordinates: ``0 <= x <= width``) and span at least
    :data:`MIN_LANDMARK_SPREAD` pixels."""
    for x, y in points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise _invalid(
                f"landmarks[{index}]: the point [{x:g}, {y:g}] lies outside {name} ({width} x {height} pixels)"
            )
    tensor = torch.tensor(points, dtype=torch.float32)
    spread = float((tensor.amax(0) - tensor.amin(0)).max())
    if spread < MIN_LANDMARK_SPREAD:
        raise _invalid(
            f"landmarks[{index}]: the five points span {spread:g} pixels, nearly one point; a face's eyes, nose "
            f"and mouth corners are at least {MIN_LANDMARK_SPREAD:g} pixel apart"
        )
    return tensor


# FastAPI reads the endpoints' annotations from this module's globals (they are strings under
# ``from __future__ import annotations``), so what they name must live here.
images_field = File(description="images (JPEG, PNG, WebP or BMP): photos with a face_detector, else face crops")
landmarks_field = Form(
    description="JSON: five [x, y] points per image (or null), inside the image; they align the face instead of "
    "the detector"
)


match_query = Query(
    pattern="^(template|best)$",
    description="score each person by their template (the quality-weighted mean of their faces) or their best face",
)


def valid_name(name: str) -> str:
    """:func:`check_name` with its error as a 422."""
    try:
        return check_name(name)
    except ValueError as error:
        raise _invalid(str(error)) from None


class FaceHost(Protocol):
    """What the face endpoints use of the app's server (:class:`sightkit.serve.app.Server`),
    stated here so that this module does not import the app (which imports it)."""

    face: FaceService | None
    read_key: Callable[..., Awaitable[None]]
    write_key: Callable[..., Awaitable[None]]

    async def read_images(self, uploads: list[UploadFile]) -> list[tuple[str, Tensor]]: ...

    async def prepare(self, name: str, function: Callable[..., Any], *args: Any) -> Any: ...

    async def run(self, which: str, item: Any) -> Any: ...


def face_router(server: FaceHost, errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    """The ``/v1/face`` endpoints of ``server`` (which has a :class:`FaceService`)."""
    if server.face is None:
        raise ValueError("face_router needs a server started with face_weights")
    face = server.face
    router = APIRouter(prefix="/v1/face", tags=["face"])
    reading = [Depends(server.read_key)]
    writing = [Depends(server.write_key)]

    async def faces_of(uploads: list[UploadFile], landmarks: str | None) -> list[tuple[str, Tensor, list[Face]]]:
        """``(name, image, faces)`` of each upload; the faces by decreasing detection score."""
        decoded = await server.read_images(uploads)
        marks = parse_landmarks(landmarks, len(decoded))
        points = [
            None if mark is None else check_landmarks(mark, index, name, image.shape[-1], image.shape[-2])
            for index, ((name, image), mark) in enumerate(zip(decoded, marks, strict=True))
        ]
        results = []
        for (name, image), mark in zip(decoded, points, strict=True):
            if mark is not None or face.detector is None:
                found = [await server.prepare(name, face.crop, image, mark)]
            else:
                detected = await server.run("face_detect", image)
                found = await server.prepare(name, face.align, image, detected)
            results.append((name, image, found))
        return results

    async def embed(faces: list[Face]) -> list[Tensor]:
        return list(await asyncio.gather(*(server.run("face", f.crop) for f in faces)))

    def largest(name: str, faces: list[Face]) -> Face:
        if not faces:
            raise ServeError(422, "no_face", f"{name}: no face found (face_detector={face.detector_name})")
        return max(faces, key=lambda f: f.area)

    @router.get(
        "", response_model=GalleryResponse, responses=errors, dependencies=reading, summary="Enrolled identities"
    )
    async def identities() -> dict[str, Any]:
        return {"identities": await run_in_threadpool(face.gallery.identities)}

    @router.post(
        "/enroll",
        response_model=EnrollResponse,
        responses=errors,
        dependencies=writing,
        summary="Add faces of a person to the gallery (the largest face of each image)",
    )
    async def enroll(
        name: Annotated[str, Form(description="the person's name (1 to 128 printable characters)")],
        images: Annotated[list[UploadFile], images_field],
        landmarks: Annotated[str | None, landmarks_field] = None,
    ) -> dict[str, Any]:
        name = valid_name(name)
        chosen = [(source, largest(source, found)) for source, _, found in await faces_of(images, landmarks)]
        skipped = [{"image": source, "reasons": f.skipped} for source, f in chosen if f.skipped]
        chosen = [(source, f) for source, f in chosen if not f.skipped]
        if not chosen:
            shown = "; ".join(f"{s['image']}: {', '.join(s['reasons'])}" for s in skipped)
            raise ServeError(422, "poor_face", f"no face is good enough to enrol ({shown})")
        vectors = torch.stack(await embed([f for _, f in chosen]))
        weights = torch.tensor([f.weight for _, f in chosen], dtype=torch.float64)
        sources = [source for source, _ in chosen]
        total = await run_in_threadpool(face.gallery.enroll, name, vectors, sources, weights)
        return {"name": name, "added": len(chosen), "total": total, "skipped": skipped}

    @router.post(
        "/identify",
        response_model=IdentifyResponse,
        responses=errors,
        dependencies=reading,
        summary="Who is in each image (every face found)",
    )
    async def identify(
        images: Annotated[list[UploadFile], images_field],
        landmarks: Annotated[str | None, landmarks_field] = None,
        top_k: Annotated[int, Query(ge=1, le=100, description="candidates per face")] = 5,
        match: Annotated[str, match_query] = "template",
    ) -> dict[str, Any]:
        uploads = await faces_of(images, landmarks)
        usable = [f for _, _, found in uploads for f in found if not f.skipped]
        vectors = await embed(usable)
        candidates = (
            await run_in_threadpool(face.gallery.identify, torch.stack(vectors), top_k, match) if vectors else []
        )
        answers = iter(candidates)
        results = []
        for source, image, found in uploads:
            faces = []
            for each in found:
                matches = [] if each.skipped else next(answers)
                best = matches[0] if matches else None
                identity = best[0] if best is not None and best[1] > face.threshold else None
                faces.append(
                    {**each.where(), "identity": identity, "matches": [{"name": n, "score": s} for n, s in matches]}
                )
            results.append({"image": source, "width": image.shape[-1], "height": image.shape[-2], "faces": faces})
        return {"threshold": face.threshold, "results": results}

    @router.post(
        "/verify",
        response_model=VerifyResponse,
        responses=errors,
        dependencies=reading,
        summary="Are two faces one person (the largest face of each image)",
    )
    async def verify(
        image: Annotated[UploadFile, File(description="an image with a face")],
        image2: Annotated[UploadFile | None, File(description="a second image (or give name)")] = None,
        name: Annotated[str | None, Form(description="an enrolled person to compare with (or give image2)")] = None,
        landmarks: Annotated[str | None, landmarks_field] = None,
        match: Annotated[str, match_query] = "template",
    ) -> dict[str, Any]:
        if (image2 is None) == (name is None):
            raise _invalid("give exactly one of image2 (a second face) or name (enrolled)")
        against = valid_name(name) if name is not None else ""
        uploads = [image] if image2 is None else [image, image2]
        chosen = [largest(source, found) for source, _, found in await faces_of(uploads, landmarks)]
        for upload, each in zip(uploads, chosen, strict=True):
            if each.skipped:
                why = ", ".join(each.skipped)
                raise ServeError(
                    422, "poor_face", f"{upload.filename}: the face is below the quality thresholds ({why})"
                )
        vectors = await embed(chosen)
        if image2 is not None:
            score, against = float(vectors[0] @ vectors[1]), image2.filename or "image 1"
        else:
            own = await run_in_threadpool(face.gallery.embeddings_of, against)
            if own.shape[0] == 0:
                known = len(await run_in_threadpool(face.gallery.identities))
                raise ServeError(404, "unknown_name", f"{against!r} is not enrolled (enrolled: {known} people)")
            # As identification scores the person: their template, or the best of their embeddings.
            if match == "template":
                template = await run_in_threadpool(face.gallery.template_of, against)
                score = float(template @ torch.nn.functional.normalize(vectors[0].float(), dim=0))
            else:
                score = float((own @ vectors[0]).max())
        score = round(score, 6)
        return {"score": score, "same": score > face.threshold, "threshold": face.threshold, "against": against}

    @router.delete(
        "/{name}",
        response_model=DeleteResponse,
        responses=errors,
        dependencies=writing,
        summary="Remove a person from the gallery",
    )
    async def delete(name: str) -> dict[str, Any]:
        name = valid_name(name)
        removed = await run_in_threadpool(face.gallery.delete, name)
        if removed == 0:
            raise ServeError(404, "unknown_name", f"{name!r} is not enrolled")
        return {"name": name, "removed": removed}

    return router
