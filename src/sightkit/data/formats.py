"""One entry to detection datasets in the three layouts users have: COCO, YOLO and Pascal VOC.

:func:`detect_layout` tells them apart, :func:`load_split` reads any split of any of them as
COCO records, :func:`open_detection_dataset` gives the :class:`~sightkit.data.CocoDetection`
(or :class:`~sightkit.data.CocoKeypoints`) that training and evaluation read, and
:func:`convert_dataset` writes a dataset in another layout (``sightkit data convert``).

Layouts (``data=`` of the detect and pose commands)::

    coco   DATA/images/...  DATA/annotations/<split>.json        (sightkit data synth writes it)
           DATA/{images/,}val2017/  DATA/annotations/instances_val2017.json   (COCO's own naming)
    yolo   DATA/data.yaml (or DATA itself is the .yaml)  images/<split>/, labels/<split>/*.txt
    voc    DATA/JPEGImages/  DATA/Annotations/*.xml  DATA/ImageSets/Main/<split>.txt

YOLO and VOC splits are converted to a COCO JSON once and kept in a cache folder
(``$SIGHTKIT_CACHE``, else ``$XDG_CACHE_HOME/sightkit``, else ``~/.cache/sightkit``) under a
name that changes when any of the dataset's annotation or image files changes (their names,
sizes and modification times), so the COCO evaluation reads a real file and a second run
starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sightkit._api import export
from sightkit.data.coco import CocoDetection, CocoKeypoints
from sightkit.data.voc import voc_splits, voc_to_coco, write_voc
from sightkit.data.yolo import (
    find_yolo_yaml,
    read_yolo_yaml,
    write_yolo,
    yolo_label_path,
    yolo_split_images,
    yolo_to_coco,
)

LAYOUTS = ("coco", "yolo", "voc")


@export("data.detect_layout")
def detect_layout(data: str | os.PathLike[str]) -> str:
    """``"coco"``, ``"yolo"`` or ``"voc"``: the layout of the dataset at ``data`` (a folder, or a
    YOLO ``.yaml`` file); see the module docstring.

    Raises:
        FileNotFoundError: ``data`` does not exist, or is a folder in none of the layouts (the
            message says what each needs).
    """
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(
            f"data={str(data)!r} does not exist; make a dataset with `sightkit data synth shapes out={data}`, "
            "or point data= at a COCO, YOLO or VOC dataset"
        )
    if path.is_file():
        if path.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        raise FileNotFoundError(f"data={str(data)!r} is a file; expected a dataset folder or a YOLO .yaml file")
    if (path / "annotations").is_dir() and any((path / "annotations").glob("*.json")):
        return "coco"
    if (path / "Annotations").is_dir():
        return "voc"
    if find_yolo_yaml(path) is not None:
        return "yolo"
    hint = " (it has images/ and labels/: add a data.yaml with names:)" if (path / "labels").is_dir() else ""
    raise FileNotFoundError(
        f"data={str(data)!r} is not a dataset folder{hint}: expected annotations/<split>.json (COCO), "
        "data.yaml with images/ and labels/ (YOLO), or Annotations/*.xml with JPEGImages/ (VOC)"
    )


@export("data.dataset_splits")
def dataset_splits(data: str | os.PathLike[str]) -> list[str]:
    """The split names of the dataset at ``data``: the COCO JSON stems, the YOLO file's split
    keys, or the VOC image sets (``["all"]`` for a VOC folder without ``ImageSets/Main``)."""
    layout = detect_layout(data)
    if layout == "coco":
        stems = (p.stem for p in (Path(data) / "annotations").glob("*.json"))
        return sorted({_coco_split(stem) for stem in stems if not stem.startswith("captions_")})
    if layout == "yolo":
        return list(read_yolo_yaml(_yolo_yaml(data)).splits)
    return voc_splits(data) or ["all"]


@export("data.load_split")
def load_split(
    data: str | os.PathLike[str],
    split: str,
    *,
    problems: Callable[[str, str, str, str], None] | None = None,
    keypoints: bool = False,
) -> tuple[dict[str, Any], Path]:
    """One split of a COCO, YOLO or VOC dataset as ``(COCO dict, image folder)``: the folder that
    the records' ``file_name`` values are relative to.

    Args:
        data: the dataset (see the module docstring).
        split: a split name (:func:`dataset_splits`); for a VOC folder without image sets,
            ``"all"`` is every XML file.
        keypoints: for COCO's own file names, read ``person_keypoints_<split>.json`` rather
            than ``instances_<split>.json``.
        problems: passed to the YOLO and VOC readers: bad records are reported to it as
            ``(kind, file, record, message)`` and left out instead of raising.

    Raises:
        FileNotFoundError: no such dataset or split (the message lists the splits there are).
        ValueError: a malformed annotation (when ``problems`` is ``None``).
    """
    layout = detect_layout(data)
    root = Path(data)
    if layout == "coco":
        images, path = _coco_files(root, split, keypoints)
        return json.loads(path.read_text()), images
    if layout == "yolo":
        dataset = read_yolo_yaml(_yolo_yaml(data))
        if split not in dataset.splits:
            raise FileNotFoundError(f"no split {split!r} in {dataset.yaml} (splits: {list(dataset.splits)})")
        return yolo_to_coco(dataset, split, problems=problems)
    image_dir = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    splits = voc_splits(root)
    if splits or split != "all":
        if split not in splits:
            raise FileNotFoundError(
                f"no image set {split!r} in {root / 'ImageSets' / 'Main'} (image sets: {splits or 'none'}; "
                f"write the image stems of the split, one a line, to ImageSets/Main/{split}.txt)"
            )
        return voc_to_coco(root, image_set=split, problems=problems, categories=_voc_categories(root)), image_dir
    return voc_to_coco(root, problems=problems), image_dir


#: COCO's own annotation file prefixes (``annotations/instances_val2017.json``).
_COCO_PREFIXES = ("instances_", "person_keypoints_")


def _coco_split(stem: str) -> str:
    for prefix in _COCO_PREFIXES:
        if stem.startswith(prefix):
            return stem[len(prefix) :]
    return stem


def _coco_files(root: Path, split: str, keypoints: bool) -> tuple[Path, Path]:
    """``(image folder, JSON)`` of a COCO split: sightkit's ``annotations/<split>.json`` with
    ``images/``, or COCO's own ``annotations/instances_<split>.json`` (``person_keypoints_``
    for keypoints) with ``images/<split>/`` or ``<split>/`` (``val2017``)."""
    own = root / "annotations" / f"{split}.json"
    if own.is_file():
        return root / "images", own
    prefixes = _COCO_PREFIXES[::-1] if keypoints else _COCO_PREFIXES
    for prefix in prefixes:
        path = root / "annotations" / f"{prefix}{split}.json"
        if path.is_file():
            folders = [f for f in (root / "images" / split, root / split) if f.is_dir()]
            return (folders[0] if folders else root / "images"), path
    raise FileNotFoundError(
        f"no annotations for split {split!r}: {own} does not exist (splits: {dataset_splits(root)})"
    )


def _voc_categories(root: Path) -> list[str] | None:
    """Every class name of the VOC folder, so that all image sets share category ids."""
    from sightkit.data.voc import read_voc

    annotation_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    names: set[str] = set()
    for xml in annotation_dir.glob("*.xml"):
        try:
            names.update(obj.name for obj in read_voc(xml).objects)
        except ValueError:
            continue  # reported when the split that holds it is read
    return sorted(names) or None


def _yolo_yaml(data: str | os.PathLike[str]) -> Path:
    found = find_yolo_yaml(data)
    if found is None:
        raise FileNotFoundError(f"data={str(data)!r}: no YOLO dataset file (.yaml) found")
    return found


@export("data.dataset_annotations")
def dataset_annotations(data: str | os.PathLike[str], split: str, *, keypoints: bool = False) -> tuple[Path, Path]:
    """``(image folder, COCO JSON file)`` of ``split``: the dataset's own JSON for the COCO layout
    (``person_keypoints_<split>.json`` before ``instances_<split>.json`` with ``keypoints``, in
    COCO's own naming), a cached conversion for YOLO and VOC (see the module docstring)."""
    layout = detect_layout(data)
    if layout == "coco":
        return _coco_files(Path(data), split, keypoints)
    signature = _signature(data, layout, split)
    cached = cache_dir() / "datasets" / f"{layout}-{Path(data).resolve().name}-{split}-{signature}.json"
    if cached.is_file():
        meta = json.loads(cached.read_text()).get("info", {})
        return Path(meta["sightkit_images"]), cached
    coco, images = load_split(data, split)
    coco.setdefault("info", {})["sightkit_images"] = str(images.resolve())
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(coco))
    partial.replace(cached)  # atomic: a concurrent run never reads half a file
    return images, cached


@export("data.cache_dir")
def cache_dir() -> Path:
    """sightkit's cache folder: ``$SIGHTKIT_CACHE``, else ``$XDG_CACHE_HOME/sightkit``, else ``~/.cache/sightkit``."""
    if os.environ.get("SIGHTKIT_CACHE"):
        return Path(os.environ["SIGHTKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sightkit"


def _signature(data: str | os.PathLike[str], layout: str, split: str) -> str:
    """A hash of the names, sizes and modification times of every file the split is read from."""
    root = Path(data)
    if layout == "yolo":
        dataset = read_yolo_yaml(_yolo_yaml(data))
        images = yolo_split_images(dataset, split) if split in dataset.splits else []
        files = [dataset.yaml, *images, *(yolo_label_path(p) for p in images)]
    else:
        annotation_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
        files = [*sorted(annotation_dir.glob("*.xml")), *sorted((root / "ImageSets" / "Main").glob("*.txt"))]
    digest = hashlib.sha1(f"{root.resolve()}|{split}".encode())
    for path in files:
        try:
            stat = path.stat()
        except FileNotFoundError:
            digest.update(f"{path}|-".encode())
            continue
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@export("data.open_detection_dataset")
def open_detection_dataset(
    data: str | os.PathLike[str],
    split: str,
    transforms: Callable[..., Any] | None = None,
    *,
    keypoints: bool = False,
    **options: Any,
) -> CocoDetection:
    """The dataset of ``split`` in any of the three layouts, as :class:`~sightkit.data.CocoDetection`
    (:class:`~sightkit.data.CocoKeypoints` with ``keypoints=True``: COCO, or YOLO with ``kpt_shape``).

    Args:
        data: a COCO, YOLO or VOC dataset (module docstring).
        split: the split to read (``train``, ``val``, ...).
        transforms: as for :class:`~sightkit.data.CocoDetection`.
        keypoints: read keypoints too.
        options: further keyword arguments of the dataset class (``masks``, ``on_error``,
            ``min_keypoints``, ...).

    Its ``annotation_file`` is a real COCO JSON (the cached conversion for YOLO and VOC), so
    the COCO evaluation reads it like any other.

    Raises:
        FileNotFoundError: no such dataset or split.
        ValueError: ``keypoints=True`` on a layout without keypoints, or bad annotations.
    """
    if keypoints and detect_layout(data) == "voc":
        raise ValueError(f"data={str(data)!r} is a Pascal VOC dataset, which has no keypoints; use COCO or YOLO pose")
    images, annotations = dataset_annotations(data, split, keypoints=keypoints)
    dataset_class = CocoKeypoints if keypoints else CocoDetection
    return dataset_class(images, annotations, transforms, **options)


@export("data.convert_dataset")
def convert_dataset(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    format: str,
    *,
    splits: list[str] | None = None,
    link: bool = True,
) -> dict[str, Any]:
    """Write the dataset at ``source`` (COCO, YOLO or VOC) to ``out`` in ``format``.

    Args:
        source: the dataset to read.
        out: the folder to write (created; it must not be ``source``).
        format: ``"coco"`` (``images/`` + ``annotations/<split>.json``), ``"yolo"``
            (``data.yaml`` + ``images/<split>/`` + ``labels/<split>/``) or ``"voc"``
            (``JPEGImages/`` + ``Annotations/`` + ``ImageSets/Main/<split>.txt``).
        splits: the splits to convert (default: all of them, except VOC's ``trainval`` when
            ``train`` and ``val`` are there).
        link: hard-link the images where the file system allows it (else copy them).

    Returns:
        ``{"format", "out", "splits": {split: {"images", "annotations"}}}``.

    Raises:
        ValueError: an unknown ``format``, ``out`` equal to ``source``, or annotations the
            target cannot hold (keypoints in VOC).
    """
    if format not in LAYOUTS:
        raise ValueError(f"format must be one of {', '.join(LAYOUTS)}, got {format!r}")
    out = Path(out)
    if out.resolve() == Path(source).resolve() or (out.exists() and any(out.iterdir())):
        raise ValueError(f"out={str(out)!r} must be a new or empty folder, not the source or a folder with files")
    names = splits or dataset_splits(source)
    if splits is None and {"train", "val", "trainval"} <= set(names):
        names = [n for n in names if n != "trainval"]
    loaded = {split: load_split(source, split) for split in names}
    place = _link_or_copy if link else _copy
    if format == "yolo":
        write_yolo(out, loaded, place_image=place)
    elif format == "voc":
        write_voc(out, loaded, place_image=place)
    else:
        _write_coco(out, loaded, place)
    return {
        "format": format,
        "out": str(out),
        "splits": {
            s: {"images": len(c["images"]), "annotations": len(c["annotations"])} for s, (c, _) in loaded.items()
        },
    }


def _write_coco(out: Path, splits: dict[str, tuple[dict[str, Any], Path]], place: Callable[[Path, Path], None]) -> None:
    """sightkit's COCO layout: ``images/`` (file names without a leading ``images/``), ``annotations/<split>.json``."""
    for split, (coco, images_root) in splits.items():
        records = []
        for image in coco["images"]:
            parts = Path(image["file_name"]).parts
            relative = Path(*parts[1:]) if len(parts) > 1 and parts[0] == "images" else Path(image["file_name"])
            if relative.is_absolute():
                relative = Path(relative.name)
            place(images_root / image["file_name"], out / "images" / relative)
            records.append({**image, "file_name": relative.as_posix()})
        annotations = [{k: v for k, v in a.items() if k != "origin"} for a in coco["annotations"]]
        info = {k: v for k, v in coco.get("info", {}).items() if k != "sightkit_images"}
        target = out / "annotations" / f"{split}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({**coco, "info": info, "images": records, "annotations": annotations}))


def _link_or_copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        return
    try:
        os.link(source, destination)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, destination)


def _copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not destination.exists():
        shutil.copy2(source, destination)
