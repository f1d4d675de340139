"""Serving a segmenter: per-request preparation, the batched forward pass, the answer records.

The answer of one image has the schema of ``sightkit predict segment``'s ``predictions.json``
(:func:`sightkit.tasks.segment.predict`) without the files: ``{"image", "width", "height",
"classes": {name: fraction of the image}}``, fractions rounded to 4 decimals. Each image is
resized and padded to a multiple of the model's stride exactly as ``predict`` does; only
images of one padded shape share a batch, so an answer never depends on the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors

from sightkit.models.seg import STRIDE
from sightkit.serve.detect import file_sha256
from sightkit.tasks.segment import labels_at, load_segmenter


@dataclass
class PreparedImage:
    """One image ready for the model: resized, normalised and padded ``[3, h_pad, w_pad]``,
    its resized size before padding and its original size."""

    tensor: Tensor
    resized: tuple[int, int]
    height: int
    width: int


class SegmentPredictor:
    """A segmenter rebuilt from ``sightkit train segment`` weights, answering batches of images."""

    task = "segment"

    def __init__(self, weights: str | Path, device: torch.device | str = "cpu") -> None:
        self.segmenter = load_segmenter(weights, device)
        self.device = torch.device(device)
        self.weights_sha256 = file_sha256(weights)
        self.transforms = self.segmenter.transforms()

    @property
    def name(self) -> str:
        return self.segmenter.name

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` reports about the segmenter."""
        return {
            "task": self.task,
            "model": self.segmenter.name,
            "classes": self.segmenter.classes,
            "imgsz": self.segmenter.imgsz,
            "max_size": self.segmenter.max_size,
            "weights_sha256": self.weights_sha256,
            "device": str(self.device),
        }

    def prepare(self, image: Tensor) -> PreparedImage:
        """Resize, normalise and pad a uint8 ``[3, H, W]`` image (in the request's thread)."""
        tensor = self.transforms(tv_tensors.Image(image)).as_subclass(Tensor)
        height, width = tensor.shape[-2:]
        padded = F.pad(tensor, (0, -width % STRIDE, 0, -height % STRIDE))
        return PreparedImage(padded, (int(height), int(width)), int(image.shape[-2]), int(image.shape[-1]))

    @staticmethod
    def group(item: PreparedImage) -> tuple[int, ...]:
        """The batching group of an image: its padded shape (each image carries its own padding,
        as in ``predict``, so stacking changes nothing)."""
        return tuple(item.tensor.shape)

    def infer(self, batch: list[PreparedImage]) -> list[dict[str, Any]]:
        """The fraction of each image that each class covers, at the image's original size."""
        logits = self.segmenter.model(torch.stack([p.tensor for p in batch]).to(self.device))
        answers = []
        for item, scores in zip(batch, logits, strict=True):
            labels = labels_at(scores, item.resized, (item.height, item.width))
            counts = torch.bincount(labels.flatten(), minlength=len(self.segmenter.classes)).tolist()
            answers.append(
                {name: round(c / labels.numel(), 4) for name, c in zip(self.segmenter.classes, counts, strict=True)}
            )
        return answers

    def record(self, name: str, item: PreparedImage, output: dict[str, float], **_: Any) -> dict[str, Any]:
        """One image's answer (the request's ``conf`` and ``top_k`` do not apply)."""
        return {"image": name, "width": item.width, "height": item.height, "classes": output}
