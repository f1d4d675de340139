"""``/v1/predict`` for every task: a :class:`~sightkit.Predictor` (``sightkit.load(weights)``)
answering batches of uploaded images.

The server has no inference code of its own: each batch goes to the predictor's
``predict_frames`` with the request's options, and each image's answer is its
:class:`~sightkit.results.Results` ``.to_dict()`` (the boxes, scores, labels and names of a
detector; keypoints of a pose model; landmarks of a face detector; embeddings of a face
embedder; the class map of a segmenter as COCO RLE, or as a PNG with ``mask_format=png``),
with the upload's name and size. So an answer equals what ``sightkit.load(weights)(image)``
gives in Python for the same pixels.

Only images of one size and one set of options share a batch: they are resized and padded
alike, so that an answer never depends on the other requests of its batch.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from sightkit.data.sources import Frame
from sightkit.predictor import Predictor


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Item:
    """One uploaded image for the predictor and the request's options (sorted ``(name, value)``)."""

    frame: Frame
    options: tuple[tuple[str, Any], ...]


class PredictService:
    """A predictor behind ``/v1/predict``.

    Args:
        predictor: what :func:`sightkit.load` returned for the served weights.
        weights: the weights file (its hash is reported by ``/v1/model``).
        fixed: options of every call that come from the server's settings (e.g. a pose
            model's person ``detector``), not from requests.
        top_k: the most instances a request may ask for, where the task has ``top_k``.
    """

    def __init__(
        self, predictor: Predictor, weights: str | Path, fixed: dict[str, Any] | None = None, top_k: int = 100
    ) -> None:
        self.predictor = predictor
        self.fixed = fixed or {}
        self.top_k = top_k
        self.weights_sha256 = file_sha256(weights)

    @property
    def task(self) -> str:
        return self.predictor.task

    @property
    def name(self) -> str:
        return self.predictor.name

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` reports about the model."""
        predictor = self.predictor
        return {
            "task": predictor.task,
            "model": predictor.name,
            "classes": list(predictor.names),
            "category_ids": list(getattr(predictor, "category_ids", None) or []),
            "imgsz": getattr(predictor, "imgsz", None),
            "max_size": getattr(predictor, "max_size", None),
            "weights_sha256": self.weights_sha256,
            "device": str(predictor.device),
            "precision": self.fixed.get("precision", "fp32"),
            "options": sorted(predictor.options),
        }

    def options(self, conf: float | None, top_k: int | None, mask_format: str) -> tuple[tuple[str, Any], ...]:
        """The request's options this task has (``conf`` ``None``: the server's)."""
        given: dict[str, Any] = {"conf": conf}
        if "top_k" in self.predictor.options:
            given["top_k"] = min(top_k or self.top_k, self.top_k)
        if self.task == "segment":
            given["mask_format"] = mask_format
        return tuple(sorted((key, value) for key, value in given.items() if value is not None))

    @staticmethod
    def prepare(image: Tensor, name: str, options: tuple[tuple[str, Any], ...]) -> Item:
        """A decoded upload (uint8 ``[3, H, W]``) as the predictor's frame."""
        return Item(Frame(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), name), options)

    @staticmethod
    def group(item: Item) -> tuple[Any, ...]:
        """The batching group of an image: its size and the request's options."""
        return (item.frame.image.shape, item.options)

    def infer(self, batch: list[Item]) -> list[dict[str, Any]]:
        """Each image's answer; the images of a batch share one group (:meth:`group`)."""
        options = dict(batch[0].options)
        mask_format = options.pop("mask_format", "rle")
        settings = self.predictor.settings(**options, **self.fixed)
        results = self.predictor.predict_frames([item.frame for item in batch], settings)
        return [self.record(result, mask_format) for result in results]

    def record(self, result: Any, mask_format: str) -> dict[str, Any]:
        """One image's answer: ``Results.to_dict()`` with the upload's name and size."""
        height, width = result.image.shape[:2]
        record = {"image": result.path, "width": int(width), "height": int(height)}
        record.update((key, value) for key, value in result.to_dict().items() if key not in ("path", "frame"))
        if result.masks is not None:
            labels = np.asarray(result.masks)
            names = list(self.predictor.names)
            counts = np.bincount(labels.reshape(-1), minlength=len(names))[: len(names)]
            record["classes"] = {name: round(int(c) / labels.size, 4) for name, c in zip(names, counts, strict=True)}
            if mask_format == "png":
                del record["masks"]
                record["mask"] = {"format": "png", "data": class_map_png(labels), "names": names}
        return record


def class_map_png(labels: np.ndarray) -> str:
    """A class map ``[H, W]`` as a base64 PNG whose pixel values are the class indices (8-bit
    grey up to 256 classes, else 16-bit)."""
    picture = Image.fromarray(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
