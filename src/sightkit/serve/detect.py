"""Serving a detector: per-request preparation, the batched forward pass, the answer records.

The answer of one image has the schema of ``sightkit predict detect``'s ``detections.json``
(:func:`sightkit.tasks.detect.predict`): ``{"image", "width", "height", "detections": [{"label",
"category_id", "score", "box"}]}`` with ``box`` as ``xyxy`` pixels of the uploaded image, scores
rounded to 4 and coordinates to 2 decimals. A batch of one image is computed exactly as
``predict`` computes it. Only images of one resized shape share a batch: padding them to a
common size would change DETR's answers slightly (the padding mask changes the position
encodings and the border features), making an answer depend on the other requests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors

from sightkit.data.transforms import detection_transforms
from sightkit.tasks.detect import load_detector, postprocess_of


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Prepared:
    """One image ready for the model: resized, normalised ``[3, h, w]``, and its original size."""

    tensor: Tensor
    height: int
    width: int


class DetectPredictor:
    """A detector rebuilt from ``sightkit train detect`` weights, answering batches of images.

    Args:
        weights: the ``.safetensors`` file.
        device: where the model runs.
        top_k: most detections computed per image (a request may ask for fewer).
    """

    task = "detect"

    def __init__(self, weights: str | Path, device: torch.device | str = "cpu", top_k: int = 100) -> None:
        self.detector = load_detector(weights, device)
        self.device = torch.device(device)
        self.top_k = top_k
        self.weights_sha256 = file_sha256(weights)
        self.postprocess = postprocess_of(self.detector.model)
        self.transforms = detection_transforms(
            "eval",
            size=self.detector.imgsz,
            max_size=self.detector.max_size,
            mean=self.detector.mean,
            std=self.detector.std,
        )

    @property
    def name(self) -> str:
        return self.detector.name

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` reports about the detector."""
        return {
            "task": self.task,
            "model": self.detector.name,
            "classes": self.detector.classes,
            "category_ids": self.detector.category_ids,
            "imgsz": self.detector.imgsz,
            "max_size": self.detector.max_size,
            "weights_sha256": self.weights_sha256,
            "device": str(self.device),
        }

    def prepare(self, image: Tensor) -> Prepared:
        """Resize and normalise a uint8 ``[3, H, W]`` image (in the request's thread, so that
        preparation runs in parallel with the model)."""
        height, width = image.shape[-2:]
        tensor = self.transforms(tv_tensors.Image(image)).as_subclass(Tensor)
        return Prepared(tensor, int(height), int(width))

    @staticmethod
    def group(item: Prepared) -> tuple[int, ...]:
        """The batching group of an image: its resized shape (see :meth:`infer`)."""
        return tuple(item.tensor.shape)

    def infer(self, batch: list[Prepared]) -> list[list[dict[str, Any]]]:
        """The detections of each image, best first (``top_k`` at most, every score).

        The images of a batch have one shape (:meth:`group`): stacked without padding, each
        image is computed as it would be alone, so its answer never depends on the others.
        """
        shapes = {p.tensor.shape for p in batch}
        if len(shapes) != 1:
            raise ValueError(f"a batch must hold images of one shape (see group), got shapes {sorted(shapes)}")
        outputs = self.detector.model(torch.stack([p.tensor for p in batch]).to(self.device))
        sizes = torch.tensor([[p.height, p.width] for p in batch], device=self.device)
        found = self.postprocess(outputs["pred_logits"], outputs["pred_boxes"], sizes, top_k=self.top_k)
        return [self._records(f) for f in found]

    def record(
        self, name: str, item: Prepared, output: list[dict[str, Any]], conf: float, top_k: int
    ) -> dict[str, Any]:
        """One image's answer: its detections scoring at least ``conf``, ``top_k`` at most."""
        detections = [d for d in output if d["score"] >= conf][:top_k]
        return {"image": name, "width": item.width, "height": item.height, "detections": detections}

    def _records(self, found: dict[str, Tensor]) -> list[dict[str, Any]]:
        classes, category_ids = self.detector.classes, self.detector.category_ids
        return [
            {"label": classes[label], "category_id": category_ids[label], "score": score, "box": box}
            for label, score, box in zip(
                found["labels"].tolist(),
                [round(s, 4) for s in found["scores"].tolist()],
                [[round(c, 2) for c in b] for b in found["boxes"].tolist()],
                strict=True,
            )
        ]
