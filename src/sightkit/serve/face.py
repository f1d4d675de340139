"""The face endpoints: enrol, identify, verify, delete and list, on a persistent SQLite gallery.

Faces are uploaded as crops, as ``sightkit face enroll|identify|verify`` take them: with a
``landmarks`` form field (a JSON list with five ``[x, y]`` points per image, in the continuous
pixel convention of the synthetic datasets) each crop is aligned to the ArcFace template,
without one it is taken as already aligned and resized (:func:`sightkit.data.faces.face_crop`).
Embeddings are the flip-averaged, L2-normalised ones of :func:`sightkit.models.embed_faces`,
computed through the server's dynamic batcher; decisions accept a match when its cosine
similarity is above ``face_threshold``, as the command line does.

``POST /v1/face/enroll`` and ``DELETE /v1/face/{name}`` change the gallery and need the
``X-API-Key`` header when the server has a key.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from sightkit.data.faces import face_crop, normalise_face
from sightkit.models.face import embed_faces
from sightkit.serve.detect import file_sha256
from sightkit.serve.errors import ServeError
from sightkit.serve.gallery import SQLiteGallery, check_name
from sightkit.serve.schemas import (
    DeleteResponse,
    EnrollResponse,
    GalleryResponse,
    IdentifyResponse,
    VerifyResponse,
)
from sightkit.tasks.face import load_embedder

if TYPE_CHECKING:
    from sightkit.serve.app import Server


class FaceService:
    """A face embedder rebuilt from ``sightkit train face`` weights and its gallery.

    Args:
        weights: the embedder's ``.safetensors`` file.
        gallery: the SQLite file (created when missing; must hold this embedder's faces).
        device: where the embedder runs.
        threshold: cosine similarity above which two faces are taken for one person.
    """

    def __init__(
        self, weights: str | Path, gallery: str | Path, device: torch.device | str = "cpu", threshold: float = 0.4
    ) -> None:
        self.loaded = load_embedder(weights, device)
        self.weights_sha256 = file_sha256(weights)
        self.embedding = int(self.loaded.model.num_features)
        self.threshold = threshold
        # The hash ties the gallery to these weights: another model's embeddings are not comparable.
        self.gallery = SQLiteGallery(gallery, f"{self.loaded.name} sha256:{self.weights_sha256}", self.embedding)

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
            "identities": 0,
        }

    def prepare(self, image: Tensor, landmarks: Tensor | None) -> Tensor:
        """An aligned (or resized), normalised crop ``[3, S, S]`` of a uint8 image ``[3, H, W]``."""
        crop = face_crop(image, self.loaded.imgsz, landmarks)
        return normalise_face(crop, self.loaded.mean, self.loaded.std)

    def infer(self, crops: list[Tensor]) -> list[Tensor]:
        """The unit embedding ``[D]`` of each crop (flip-averaged)."""
        return list(embed_faces(self.loaded.model, torch.stack(crops), flip=True).cpu())

    def close(self) -> None:
        self.gallery.close()


def parse_landmarks(text: str | None, count: int) -> list[Tensor | None]:
    """The ``landmarks`` form field: ``None``/empty (every crop aligned already) or a JSON list of
    ``count`` entries, each five ``[x, y]`` points or ``null``."""
    if not text:
        return [None] * count
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ServeError(422, "invalid_request", f"landmarks: not JSON ({error})") from None
    if not isinstance(value, list) or len(value) != count:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        message = f"landmarks: expected a list of {count} entries (one per image), got {got}"
        raise ServeError(422, "invalid_request", message)
    marks: list[Tensor | None] = []
    for index, entry in enumerate(value):
        if entry is None:
            marks.append(None)
            continue
        try:
            points = torch.tensor(entry, dtype=torch.float32)
        except (TypeError, ValueError):
            points = None
        if points is None or points.shape != (5, 2) or not torch.isfinite(points).all():
            raise ServeError(
                422, "invalid_request", f"landmarks[{index}]: expected five [x, y] number pairs, got {entry!r}"
            )
        marks.append(points)
    return marks


# FastAPI reads the endpoints' annotations from this module's globals (they are strings under
# ``from __future__ import annotations``), so what they name must live here.
key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed when the server has api_key")
images_field = File(description="face crops: JPEG, PNG, WebP or BMP")
landmarks_field = Form(description="JSON: five [x, y] points per image, or null; omit for aligned crops")


def valid_name(name: str) -> str:
    """:func:`check_name` with its error as a 422."""
    try:
        return check_name(name)
    except ValueError as error:
        raise ServeError(422, "invalid_request", str(error)) from None


def face_router(server: Server, errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    """The ``/v1/face`` endpoints of ``server`` (which has a :class:`FaceService`)."""
    if server.face is None:
        raise ValueError("face_router needs a server started with face_weights")
    face = server.face
    router = APIRouter(prefix="/v1/face", tags=["face"])
    mutating = {**errors, 401: errors[400] | {"description": "missing or wrong X-API-Key"}}

    async def require_key(key: Annotated[str | None, Depends(key_header)]) -> None:
        if server.api_key and not hmac.compare_digest((key or "").encode(), server.api_key.encode()):
            reason = "missing" if not key else "wrong"
            message = f"this endpoint needs the server's key in header X-API-Key ({reason})"
            raise ServeError(401, "unauthorized", message)

    async def embed(uploads: list[UploadFile], landmarks: str | None) -> list[tuple[str, Tensor]]:
        decoded = await server.read_images(uploads)
        marks = parse_landmarks(landmarks, len(decoded))
        crops = [
            await run_in_threadpool(face.prepare, image, mark) for (_, image), mark in zip(decoded, marks, strict=True)
        ]
        vectors = await asyncio.gather(*(server.run("face", crop) for crop in crops))
        return [(name, vector) for (name, _), vector in zip(decoded, vectors, strict=True)]

    @router.get("", response_model=GalleryResponse, summary="Enrolled identities")
    async def identities() -> dict[str, Any]:
        return {"identities": await run_in_threadpool(face.gallery.identities)}

    @router.post(
        "/enroll",
        response_model=EnrollResponse,
        responses=mutating,
        dependencies=[Depends(require_key)],
        summary="Add faces of a person to the gallery",
    )
    async def enroll(
        name: Annotated[str, Form(description="the person's name (1 to 128 printable characters)")],
        images: Annotated[list[UploadFile], images_field],
        landmarks: Annotated[str | None, landmarks_field] = None,
    ) -> dict[str, Any]:
        name = valid_name(name)
        embedded = await embed(images, landmarks)
        vectors = torch.stack([vector for _, vector in embedded])
        sources = [source for source, _ in embedded]
        total = await run_in_threadpool(face.gallery.enroll, name, vectors, sources)
        return {"name": name, "added": len(embedded), "total": total}

    @router.post("/identify", response_model=IdentifyResponse, responses=errors, summary="Who is in each face crop")
    async def identify(
        images: Annotated[list[UploadFile], images_field],
        landmarks: Annotated[str | None, landmarks_field] = None,
        top_k: Annotated[int, Query(ge=1, le=100, description="candidates per image")] = 5,
    ) -> dict[str, Any]:
        embedded = await embed(images, landmarks)
        found = await run_in_threadpool(face.gallery.identify, torch.stack([v for _, v in embedded]), top_k)
        results = []
        for (source, _), candidates in zip(embedded, found, strict=True):
            best = candidates[0] if candidates else None
            identity = best[0] if best is not None and best[1] > face.threshold else None
            matches = [{"name": name, "score": score} for name, score in candidates]
            results.append({"image": source, "identity": identity, "matches": matches})
        return {"threshold": face.threshold, "results": results}

    @router.post("/verify", response_model=VerifyResponse, responses=errors, summary="Are two faces one person")
    async def verify(
        image: Annotated[UploadFile, File(description="a face crop")],
        image2: Annotated[UploadFile | None, File(description="a second face crop (or give name)")] = None,
        name: Annotated[str | None, Form(description="an enrolled person to compare with (or give image2)")] = None,
        landmarks: Annotated[str | None, landmarks_field] = None,
    ) -> dict[str, Any]:
        if (image2 is None) == (name is None):
            raise ServeError(422, "invalid_request", "give exactly one of image2 (a second face) or name (enrolled)")
        against = valid_name(name) if name is not None else ""
        uploads = [image] if image2 is None else [image, image2]
        embedded = await embed(uploads, landmarks)
        if image2 is not None:
            score, against = float(embedded[0][1] @ embedded[1][1]), embedded[1][0]
        else:
            known = await run_in_threadpool(face.gallery.identities)
            if against not in known:
                raise ServeError(404, "unknown_name", f"{against!r} is not enrolled (enrolled: {len(known)} people)")
            # The best of the person's embeddings, as identification scores them.
            names, vectors = await run_in_threadpool(face.gallery.entries)
            own = vectors[[i for i, n in enumerate(names) if n == against]]
            score = float((own @ embedded[0][1]).max())
        score = round(score, 6)
        return {"score": score, "same": score > face.threshold, "threshold": face.threshold, "against": against}

    @router.delete(
        "/{name}",
        response_model=DeleteResponse,
        responses=mutating,
        dependencies=[Depends(require_key)],
        summary="Remove a person from the gallery",
    )
    async def delete(name: str) -> dict[str, Any]:
        name = valid_name(name)
        removed = await run_in_threadpool(face.gallery.delete, name)
        if removed == 0:
            raise ServeError(404, "unknown_name", f"{name!r} is not enrolled")
        return {"name": name, "removed": removed}

    return router
