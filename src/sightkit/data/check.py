"""Check a detection or keypoints dataset (COCO, YOLO or Pascal VOC) and its image files, reporting every problem.

:func:`check_dataset` reads each annotation JSON once and validates every record, then opens
every image in a thread pool (Pillow releases the GIL while decoding): the header gives the
size cheaply, and a full decode finds truncated or corrupt files. Nothing stops at the first
problem; each one is reported with the file to look at and the record it concerns, so a
dataset can be fixed in one pass. ``sightkit data check DIR_OR_JSON`` prints the report.
YOLO and VOC datasets are read split by split into COCO records (:func:`sightkit.data.load_split`),
reporting the label lines and XML files that cannot be read; the records then get the same
checks, with each problem pointing at the label file line or XML object it came from.

No library does this whole job: pycocotools / faster-coco-eval index a JSON but assume it is
valid, and torchvision's datasets fail on the first bad sample, deep inside a data loader.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from sightkit._api import export
from sightkit.data.formats import dataset_splits, detect_layout, load_split
from sightkit.data.yolo import find_yolo_yaml

#: Every kind of problem :func:`check_dataset` reports, with its meaning.
PROBLEM_KINDS: dict[str, str] = {
    "bad_json": "the annotation file cannot be read as a COCO dict",
    "bad_label": "a YOLO label line or a VOC XML file cannot be read (field count, numbers, class index, XML)",
    "bad_record": "a record lacks a required field or has a wrong type",
    "duplicate_id": "an image, annotation or category id is used more than once",
    "missing_file": "an image file named in the JSON does not exist",
    "corrupt_image": "an image file cannot be opened or fully decoded (truncated, not an image)",
    "size_mismatch": "an image's actual size differs from the JSON's width and height",
    "missing_image": "an annotation's image_id is not among the JSON's images",
    "unknown_category": "an annotation's category_id is not among the JSON's categories",
    "bad_box": "a bbox is not four finite numbers",
    "empty_box": "a bbox has zero or negative width or height",
    "box_outside": "a bbox extends outside its image",
    "keypoint_count": "an annotation's keypoints do not match its category's keypoint count or its num_keypoints",
    "keypoint_visibility": "a keypoint's visibility is not one of COCO's codes 0, 1, 2",
    "keypoint_outside": "a labelled keypoint (visibility > 0) lies outside its image",
}


@export("data.Problem")
@dataclass(frozen=True)
class Problem:
    """One problem found by :func:`check_dataset`.

    Attributes:
        kind: a key of ``PROBLEM_KINDS``.
        file: the file to look at: the image file for problems with image files, the
            annotation JSON for problems with its records.
        record: the record concerned, e.g. ``"image id=3"`` or ``"annotation id=17"``
            (``"annotation #4"``, the position in the list, when the id itself is bad);
            empty for problems with a whole file.
        message: what is wrong, with the values found.
    """

    kind: str
    file: str
    record: str
    message: str


@export("data.CheckReport")
@dataclass
class CheckReport:
    """The result of :func:`check_dataset`.

    Attributes:
        sources: ``(annotation JSON, image folder)`` pairs that were checked.
        images: the number of image records read.
        annotations: the number of annotation records read.
        decoded: whether every image was fully decoded (else only headers were read).
        problems: every problem found, grouped by annotation file, records first.
    """

    sources: list[tuple[Path, Path]] = field(default_factory=list)
    images: int = 0
    annotations: int = 0
    decoded: bool = True
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """The number of problems of each kind found, in ``PROBLEM_KINDS`` order."""
        counter = Counter(problem.kind for problem in self.problems)
        return {kind: counter[kind] for kind in PROBLEM_KINDS if counter[kind]}

    def table(self, limit: int | None = None) -> Table:
        """The problems as a rich table, at most ``limit`` rows (``None``: all)."""
        shown = self.problems if limit is None else self.problems[:limit]
        table = Table(title=f"{len(self.problems)} problem(s) in {self.images} images, {self.annotations} annotations")
        table.add_column("problem", style="bold red", no_wrap=True)
        table.add_column("file", overflow="fold")
        table.add_column("record", no_wrap=True)
        table.add_column("details", overflow="fold")
        for problem in shown:
            # Text, not markup: a file named "photo [copy].jpg" is shown as it is.
            table.add_row(problem.kind, Text(problem.file), Text(problem.record), Text(problem.message))
        if len(shown) < len(self.problems):
            table.caption = f"{len(self.problems) - len(shown)} more problem(s) not shown"
        return table


@export("data.check_dataset")
def check_dataset(
    path: str | os.PathLike[str],
    *,
    images: str | os.PathLike[str] | None = None,
    decode: bool = True,
    workers: int = 8,
    tolerance: float = 0.5,
    progress: bool = True,
) -> CheckReport:
    """Check a dataset and its images; report every problem (see ``PROBLEM_KINDS``).

    Args:
        path: an annotation JSON, a dataset folder holding ``annotations/*.json`` (or
            ``*.json`` at its top level) and the images, a YOLO dataset (its ``.yaml`` or
            the folder with it) or a Pascal VOC folder (``Annotations/``, ``JPEGImages/``);
            every split is checked.
        images: for COCO, the folder that the JSON ``file_name`` values are relative to. By default
            the first of ``images/SPLIT``, ``SPLIT``, ``images`` and the dataset folder that
            holds the first listed image, where the dataset folder is the JSON's folder (its
            parent for ``annotations/``) and ``SPLIT`` is the part of the JSON's name after
            its last ``_`` (``instances_val2017.json`` -> ``val2017``).
        decode: fully decode every image to find truncated files; ``False`` reads only the
            headers (sizes), which is much faster.
        workers: threads that open images.
        tolerance: how far, in pixels, a box or keypoint may extend beyond the image before
            it is reported (COCO's own boxes overshoot by rounding).
        progress: show a progress bar while reading images.

    Returns:
        A :class:`CheckReport`; ``report.ok`` is True when nothing was found. Sizes are
        compared as stored in the file, before any EXIF rotation.

    Raises:
        FileNotFoundError: ``path`` or ``images`` does not exist.
        ValueError: a folder without annotation JSON files, or a bad ``workers``/``tolerance``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path not found: {path}")
    if images is not None and not Path(images).is_dir():
        raise FileNotFoundError(f"images must be a folder, not found: {images}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not (isinstance(tolerance, int | float) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0 (pixels), got {tolerance!r}")
    report = CheckReport(decoded=decode)
    per_file: list[tuple[list[Problem], list[_ImageJob]]] = []
    layout = _layout(path)
    for source, split in _converted_splits(path) if layout in ("yolo", "voc") else []:
        found: list[Problem] = []
        coco, image_root = load_split(path, split, problems=lambda *p, into=found: into.append(Problem(*p)))
        report.sources.append((source, image_root))
        checker = _RecordChecker(source, image_root, tolerance)
        per_file.append((found + list(checker.check(coco)), checker.image_jobs))
        report.images += len(coco["images"])
        report.annotations += len(coco["annotations"])
    for json_path in [] if layout in ("yolo", "voc") else _annotation_files(path):
        problems, coco = _load_json(json_path)
        if coco is None:
            per_file.append((problems, []))
            continue
        image_root = Path(images) if images is not None else _image_root(json_path, coco)
        report.sources.append((json_path, image_root))
        checker = _RecordChecker(json_path, image_root, tolerance)
        per_file.append((list(checker.check(coco)), checker.image_jobs))
        report.images += len(coco["images"])
        report.annotations += len(coco["annotations"])

    found = iter(_check_images([job for _, jobs in per_file for job in jobs], decode, workers, progress))
    for record_problems, jobs in per_file:
        report.problems.extend(record_problems)
        for _ in jobs:
            report.problems.extend(next(found))
    return report


@dataclass(frozen=True)
class _ImageJob:
    path: Path
    record: str
    size: tuple[int, int] | None  # (width, height) from the JSON, None when the record has none


def _layout(path: Path) -> str:
    """The dataset layout of ``path``; a JSON file or a folder in no known layout is treated as COCO."""
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    try:
        return detect_layout(path)
    except FileNotFoundError:
        return "coco"


def _converted_splits(path: Path) -> list[tuple[Path, str]]:
    """``(file problems are reported against, split)`` for each split of a YOLO or VOC dataset."""
    splits = dataset_splits(path)
    if _layout(path) == "yolo":
        dataset_file = find_yolo_yaml(path)
        return [(dataset_file or path, split) for split in splits]
    sets = path / "ImageSets" / "Main"
    return [(sets / f"{split}.txt" if split != "all" else path / "Annotations", split) for split in splits]


def _annotation_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = sorted((path / "annotations").glob("*.json")) or sorted(path.glob("*.json"))
    if not found:
        raise ValueError(f"path must be a COCO JSON file or a folder with annotations/*.json, found none in {path}")
    return found


def _image_root(json_path: Path, coco: dict[str, Any]) -> Path:
    base = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    split = json_path.stem.rsplit("_", 1)[-1]
    candidates = [d for d in (base / "images" / split, base / split, base / "images", base) if d.is_dir()]
    first = next((r.get("file_name") for r in coco["images"] if isinstance(r, dict)), None)
    if isinstance(first, str):
        for candidate in candidates:
            if (candidate / first).is_file():
                return candidate
    return candidates[0]


def _load_json(json_path: Path) -> tuple[list[Problem], dict[str, Any] | None]:
    try:
        coco = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return [Problem("bad_json", str(json_path), "", f"cannot read the JSON: {err}")], None
    if not isinstance(coco, dict):
        return [Problem("bad_json", str(json_path), "", f"expected a COCO dict, got {type(coco).__name__}")], None
    problems = []
    for key in ("images", "annotations", "categories"):
        coco.setdefault(key, [])
        if not isinstance(coco[key], list):
            message = f"{key!r} must be a list, got {type(coco[key]).__name__}"
            problems.append(Problem("bad_json", str(json_path), "", message))
    return problems, None if problems else coco


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _RecordChecker:
    """Validates the records of one COCO dict; collects the image files to open."""

    def __init__(self, json_path: Path, image_root: Path, tolerance: float) -> None:
        self.json_path = json_path
        self.image_root = image_root
        self.tolerance = tolerance
        self.image_jobs: list[_ImageJob] = []
        self.image_sizes: dict[int, tuple[int, int] | None] = {}
        self.image_files: dict[int, str] = {}
        self.keypoint_counts: dict[int, int | None] = {}  # category id -> K (None: not a keypoint category)
        self.category_names: dict[int, str] = {}
        # The label file or XML an annotation converted from YOLO or VOC came from (its "origin").
        self.current_file: str | None = None

    def problem(self, kind: str, record: str, message: str) -> Problem:
        return Problem(kind, self.current_file or str(self.json_path), record, message)

    def check(self, coco: dict[str, Any]) -> Iterator[Problem]:
        yield from self._images(coco["images"])
        yield from self._categories(coco["categories"])
        yield from self._annotations(coco["annotations"])

    def _ids(self, records: list[Any], noun: str) -> Iterator[tuple[Any, str, Problem | None]]:
        """Yield each record with its label and a problem when its id is missing or duplicated."""
        seen: dict[int, int] = {}
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                yield None, f"{noun} #{index}", self.problem("bad_record", f"{noun} #{index}", "not a JSON object")
                continue
            record_id = record.get("id")
            if not _is_int(record_id):
                message = f"'id' must be an integer, got {record_id!r}"
                yield None, f"{noun} #{index}", self.problem("bad_record", f"{noun} #{index}", message)
            elif record_id in seen:
                label = f"{noun} id={record_id}"
                message = f"id {record_id} is used by {noun} records #{seen[record_id]} and #{index}"
                yield None, label, self.problem("duplicate_id", label, message)
            else:
                seen[record_id] = index
                yield record, f"{noun} id={record_id}", None

    def _images(self, records: list[Any]) -> Iterator[Problem]:
        for record, label, problem in self._ids(records, "image"):
            if problem is not None:
                yield problem
                continue
            file_name = record.get("file_name")
            width, height = record.get("width"), record.get("height")
            size = (width, height) if _is_int(width) and _is_int(height) and width > 0 and height > 0 else None
            if size is None:
                message = f"'width' and 'height' must be positive integers, got {width!r} and {height!r}"
                yield self.problem("bad_record", label, message)
            self.image_sizes[record["id"]] = size
            if not isinstance(file_name, str) or not file_name:
                yield self.problem("bad_record", label, f"'file_name' must be a non-empty string, got {file_name!r}")
                continue
            self.image_files[record["id"]] = file_name
            self.image_jobs.append(_ImageJob(self.image_root / file_name, label, size))

    def _categories(self, records: list[Any]) -> Iterator[Problem]:
        for record, label, problem in self._ids(records, "category"):
            if problem is not None:
                yield problem
                continue
            self.category_names[record["id"]] = str(record.get("name", record["id"]))
            names = record.get("keypoints")
            if names is not None and not isinstance(names, list):
                yield self.problem("bad_record", label, f"'keypoints' must be a list of names, got {names!r}")
                names = None
            self.keypoint_counts[record["id"]] = None if names is None else len(names)

    def _annotations(self, records: list[Any]) -> Iterator[Problem]:
        for record, label, problem in self._ids(records, "annotation"):
            if problem is not None:
                yield problem
                continue
            image_id, category_id = record.get("image_id"), record.get("category_id")
            where = label
            origin = record.get("origin")
            self.current_file = None
            if isinstance(origin, str):
                self.current_file, _, label = origin.rpartition(":")
                where = label
            size = None
            if image_id not in self.image_sizes:
                yield self.problem("missing_image", label, f"image_id {image_id!r} is not among the images")
            else:
                size = self.image_sizes[image_id]
                if self.current_file is None:
                    where = f"{label} (image id={image_id}, {self.image_files.get(image_id, '?')})"
            if category_id not in self.category_names:
                message = f"category_id {category_id!r} is not among the categories"
                yield self.problem("unknown_category", where, message)
            yield from self._box(record.get("bbox"), size, where)
            if "keypoints" in record:
                expected = self.keypoint_counts.get(category_id)
                yield from self._keypoints(record, expected, size, where)

    def _box(self, bbox: Any, size: tuple[int, int] | None, where: str) -> Iterator[Problem]:
        if bbox is None:
            yield self.problem("bad_record", where, "missing 'bbox'")
            return
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            yield self.problem("bad_box", where, f"bbox must be [x, y, width, height] of finite numbers, got {bbox!r}")
            return
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            yield self.problem("empty_box", where, f"bbox {bbox} has width {w} and height {h}; both must be > 0")
        if size is not None:
            width, height = size
            tol = self.tolerance
            if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
                message = f"bbox {bbox} (x2={x + w:g}, y2={y + h:g}) extends outside the {width}x{height} image"
                yield self.problem("box_outside", where, message)

    def _keypoints(
        self, record: dict[str, Any], expected: int | None, size: tuple[int, int] | None, where: str
    ) -> Iterator[Problem]:
        values = record["keypoints"]
        if not (isinstance(values, list) and all(_is_number(v) for v in values)):
            yield self.problem("bad_record", where, "'keypoints' must be a flat list of finite numbers [x, y, v, ...]")
            return
        if expected is not None and len(values) != 3 * expected:
            message = f"{len(values)} keypoint values; the category has {expected} keypoints ({3 * expected} values)"
            yield self.problem("keypoint_count", where, message)
            return
        if len(values) % 3:
            yield self.problem("keypoint_count", where, f"{len(values)} keypoint values is not a multiple of 3")
            return
        triples = [values[i : i + 3] for i in range(0, len(values), 3)]
        bad_codes = [i for i, (_, _, v) in enumerate(triples) if v not in (0, 1, 2)]
        if bad_codes:
            codes = [triples[i][2] for i in bad_codes]
            message = f"keypoints {bad_codes} have visibility {codes}; COCO's codes are 0, 1, 2"
            yield self.problem("keypoint_visibility", where, message)
        if size is not None:
            width, height = size
            tol = self.tolerance
            outside = [
                i
                for i, (x, y, v) in enumerate(triples)
                if v > 0 and not (-tol <= x <= width + tol and -tol <= y <= height + tol)
            ]
            if outside:
                points = [tuple(triples[i][:2]) for i in outside]
                message = f"keypoints {outside} at {points} lie outside the {width}x{height} image"
                yield self.problem("keypoint_outside", where, message)
        labelled = sum(1 for _, _, v in triples if v > 0)
        declared = record.get("num_keypoints")
        if declared is not None and declared != labelled:
            message = f"num_keypoints is {declared!r} but {labelled} keypoints have visibility > 0"
            yield self.problem("keypoint_count", where, message)


def _open_image(job: _ImageJob, decode: bool) -> list[Problem]:
    file = str(job.path)
    if not job.path.is_file():
        return [Problem("missing_file", file, job.record, "the image file does not exist")]
    try:
        with Image.open(job.path) as image:
            actual = image.size
            if decode:
                image.load()
    # Decoders raise many types on damaged bytes (OSError for truncation, SyntaxError for a
    # broken PNG chunk, ValueError, struct.error, ...); any of them means a corrupt file.
    except Exception as err:
        return [Problem("corrupt_image", file, job.record, f"cannot {'decode' if decode else 'open'}: {err}")]
    if job.size is not None and actual != job.size:
        message = f"the file is {actual[0]}x{actual[1]} but the JSON says {job.size[0]}x{job.size[1]} (width x height)"
        return [Problem("size_mismatch", file, job.record, message)]
    return []


def _check_images(jobs: list[_ImageJob], decode: bool, workers: int, progress: bool) -> list[list[Problem]]:
    """The problems of each image file, in job order."""
    columns = (TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    results = []
    with (
        Progress(*columns, transient=True, disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        task = bar.add_task("images", total=len(jobs))
        for found in pool.map(partial(_open_image, decode=decode), jobs):
            results.append(found)
            bar.advance(task)
    return results
