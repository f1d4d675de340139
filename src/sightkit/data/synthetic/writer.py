"""Writing synthetic datasets to disk in COCO's format.

Every generator writes the same layout, which :class:`sightkit.data.CocoDetection` and
:class:`sightkit.data.CocoKeypoints` read back::

    OUT/images/000000.png ...           the images
    OUT/annotations/train.json          COCO JSON, file_name relative to OUT/images
    OUT/annotations/val.json            the last round(val_fraction * images) images
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval.core import mask as coco_mask
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

IMAGE_FORMATS = ("png", "jpg")


def check_common(images: int, val_fraction: float, image_format: str) -> None:
    """Validate the settings every generator shares (``ValueError`` naming the setting)."""
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"format must be one of {IMAGE_FORMATS}, got {image_format!r}")


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a bool ``[H, W]`` mask, with ``counts`` as a JSON string."""
    rle = coco_mask.encode(np.asfortranarray(mask[..., None].astype(np.uint8)))[0]
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_box(mask: np.ndarray) -> list[float]:
    """Tight COCO box ``[x, y, w, h]`` of a non-empty bool mask, in continuous pixels (the
    box of pixel ``(i, j)`` alone is ``[j, i, 1, 1]``)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def save_image(image: np.ndarray, path: Path) -> None:
    """Write uint8 ``[H, W, 3]`` (RGB) or ``[H, W]`` (one channel) as PNG (fast compression) or JPEG."""
    picture = Image.fromarray(image)
    if path.suffix == ".png":
        picture.save(path, compress_level=1)
    else:
        picture.save(path, quality=92)


def val_count(images: int, val_fraction: float) -> int:
    return math.floor(images * val_fraction + 0.5)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar; yields ``advance()``."""
    if not enabled:
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


class CocoWriter:
    """Collects images and their annotations and writes ``annotations/{train,val}.json``."""

    def __init__(
        self, out: str | Path, categories: list[dict[str, Any]], images: int, val_fraction: float, description: str
    ) -> None:
        self.out = Path(out)
        self.image_dir = self.out / "images"
        self.image_dir.mkdir(parents=True, exist_ok=True)
        (self.out / "annotations").mkdir(parents=True, exist_ok=True)
        self.categories = categories
        self.first_val = images - val_count(images, val_fraction)
        self.description = description
        self.splits: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {"images": [], "annotations": []} for name in ("train", "val")
        }
        self.next_annotation_id = 1

    def add(self, index: int, image: np.ndarray, annotations: list[dict[str, Any]], image_format: str) -> str:
        """Save image number ``index`` and record its annotations (dicts without ``id`` and
        ``image_id``, which are assigned here). Returns the file name."""
        file_name = f"{index:06d}.{image_format}"
        save_image(image, self.image_dir / file_name)
        split = self.splits["train" if index < self.first_val else "val"]
        image_id = index + 1
        split["images"].append(
            {"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]}
        )
        for annotation in annotations:
            split["annotations"].append({"id": self.next_annotation_id, "image_id": image_id, **annotation})
            self.next_annotation_id += 1
        return file_name

    def close(self) -> dict[str, Path]:
        """Write the JSON files; returns ``{"train": path, "val": path}``."""
        paths = {}
        for name, split in self.splits.items():
            data = {
                "info": {"description": self.description, "version": "1.0"},
                "licenses": [],
                "images": split["images"],
                "annotations": split["annotations"],
                "categories": self.categories,
            }
            paths[name] = self.out / "annotations" / f"{name}.json"
            paths[name].write_text(json.dumps(data))
        return paths
