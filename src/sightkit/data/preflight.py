"""A fast check of a dataset's image files before training starts.

A missing, unreadable, truncated or oversized image found at step 40,000 ends a run that
could have been told at step 0. :func:`check_images` reads each file once and checks it
without decoding it, as :func:`sightkit.data.read_image` does before it decodes: the
header (format and size) against ``max_pixels``, and for JPEG and PNG that the file is
complete (the JPEG end-of-image marker after the image data, the PNG ``IEND`` chunk). It
reads files on a few threads, since the work is mostly waiting for the disk.

:func:`sample_image_paths` finds which file each sample of a dataset reads, through the
datasets' ``image_path(index)`` method (and through ``Subset`` / ``ConcatDataset``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset, Subset

from sightkit._api import export
from sightkit.data.coco import DEFAULT_MAX_PIXELS, UNRECOGNISED, image_problem


def _problem(path: Path, max_pixels: int) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    found = image_problem(data, max_pixels)
    if isinstance(found, str):
        return found
    if found is None:
        return UNRECOGNISED
    found.close()
    return None


@export("data.check_images")
def check_images(paths: Iterable[str | Path], max_pixels: int = DEFAULT_MAX_PIXELS, threads: int = 8) -> dict[str, str]:
    """Check image files without decoding them (see the module docstring).

    Args:
        paths: the files; each is checked once however often it appears.
        max_pixels: the largest ``width * height`` accepted (0: no limit).
        threads: files read at once.

    Returns:
        ``{path: reason}`` for every file that :func:`sightkit.data.read_image` would refuse,
        in the order of ``paths``; empty when all are good.
    """
    if max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0: no limit), got {max_pixels}")
    unique = list(dict.fromkeys(str(p) for p in paths))
    workers = max(1, min(threads, len(unique), (os.cpu_count() or 1) * 4))
    with ThreadPoolExecutor(workers) as pool:
        reasons = pool.map(lambda p: _problem(Path(p), max_pixels), unique)
        return {path: reason for path, reason in zip(unique, reasons, strict=True) if reason is not None}


@export("data.sample_image_paths")
def sample_image_paths(dataset: Dataset) -> list[Path] | None:
    """The image file each sample of ``dataset`` reads, in sample order, or None when the
    dataset does not say (it has no ``image_path(index)`` method)."""
    if isinstance(dataset, Subset):
        inner = sample_image_paths(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        parts = [sample_image_paths(part) for part in dataset.datasets]
        return None if any(p is None for p in parts) else [path for part in parts for path in part]
    image_path = getattr(dataset, "image_path", None)
    if not callable(image_path):
        return None
    return [Path(image_path(index)) for index in range(len(dataset))]


def describe_problems(problems: dict[str, str], total: int, shown: int = 10) -> str:
    """``problems`` as one line: how many of ``total`` files, then each path and reason
    (the first ``shown`` of them)."""
    items = [f"{path} ({reason})" for path, reason in list(problems.items())[:shown]]
    more = len(problems) - len(items)
    return (
        f"{len(problems)} of {total} image files cannot be used: "
        + "; ".join(items)
        + (f"; and {more} more" if more else "")
    )


def indices_without(paths: Sequence[Path], bad: Iterable[str]) -> list[int]:
    """The sample indices whose image is not in ``bad``."""
    bad = set(bad)
    return [i for i, path in enumerate(paths) if str(path) not in bad]
