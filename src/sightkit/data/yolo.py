"""Ultralytics / YOLO datasets: read a split as COCO records, write COCO records as YOLO.

The layout (what ``ultralytics`` trains from)::

    ROOT/data.yaml                 path (optional), train, val, test, names, nc; kpt_shape for poses
    ROOT/images/train/x.jpg        the images (a split is a folder, a .txt list of images, or a list)
    ROOT/labels/train/x.txt        one object per line: "class cx cy w h", normalised to [0, 1]

A label file sits where its image is with the last ``images`` folder of the path replaced by
``labels`` and the suffix by ``.txt``; an image without one has no objects (a negative). Pose
labels append ``K`` keypoints as ``x y`` or ``x y v`` (``kpt_shape: [K, 2 or 3]``, normalised,
``v`` in COCO's codes 0/1/2); a line with more than five numbers in a detection dataset is a
polygon ``x1 y1 x2 y2 ...``, whose extent is the box. ``names`` is a list or a mapping
``{index: name}``.

Relative paths in the YAML resolve against ``path``; a relative ``path`` resolves against the
YAML's folder, then the working folder, then ultralytics' ``datasets_dir`` setting (where
ultralytics itself looks), and a missing ``path`` is the YAML's folder (the files
:func:`write_yolo` writes leave ``path`` out, so both tools read them the same). COCO
category ids are kept in an extra ``category_ids`` key, which ultralytics ignores; without
it, class ``i`` becomes category id ``i + 1``.

Coordinates: ``cx = (x + w / 2) / W`` with COCO's continuous ``[x, y, w, h]`` pixels, as in
ultralytics' own COCO converter. Image sizes are read from the image headers, as stored
(EXIF orientation is not applied, as :func:`sightkit.data.read_image` reads pixels).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from sightkit._api import export
from sightkit.data.coco import COCO_KEYPOINT_NAMES, COCO_SKELETON, keypoint_flip_pairs

#: Image suffixes of a YOLO split folder (those ultralytics reads and OpenCV decodes).
YOLO_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Names of the dataset file looked for in a YOLO dataset folder.
YAML_NAMES = ("data.yaml", "dataset.yaml")

#: Called with (kind, file, record, message) for each problem found in tolerant reading; kinds
#: as in :data:`sightkit.data.check.PROBLEM_KINDS`.
ProblemSink = Callable[[str, str, str, str], None]


@export("data.YoloDataset")
@dataclass(frozen=True)
class YoloDataset:
    """A parsed YOLO dataset file.

    Attributes:
        yaml: the dataset file.
        root: the folder the split entries are relative to.
        splits: the split entries as written (``{"train": ["images/train"], ...}``).
        names: class names by class index.
        category_ids: COCO category id of each class.
        kpt_shape: ``(K, 2 or 3)`` for pose datasets, else ``None``.
        keypoint_names: the ``K`` keypoint names (COCO's when ``K == 17`` and the file has none).
        skeleton: limbs as 1-based keypoint index pairs (COCO's when the names are COCO's).
    """

    yaml: Path
    root: Path
    splits: dict[str, list[str]]
    names: list[str]
    category_ids: list[int]
    kpt_shape: tuple[int, int] | None = None
    keypoint_names: list[str] | None = None
    skeleton: list[list[int]] | None = None


@export("data.find_yolo_yaml")
def find_yolo_yaml(data: str | os.PathLike[str]) -> Path | None:
    """The YOLO dataset file of ``data``: ``data`` itself when it is a ``.yaml``/``.yml`` file, else
    ``data.yaml``/``dataset.yaml`` or the only ``*.yaml`` in the folder ``data``; ``None`` if there is none."""
    path = Path(data)
    if path.is_file():
        return path if path.suffix.lower() in (".yaml", ".yml") else None
    if not path.is_dir():
        return None
    for name in YAML_NAMES:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
    return found[0] if len(found) == 1 else None


@export("data.read_yolo_yaml")
def read_yolo_yaml(path: str | os.PathLike[str]) -> YoloDataset:
    """Read an ultralytics dataset file (see the module docstring).

    Raises:
        FileNotFoundError: the file or its ``path`` folder does not exist.
        ValueError: it is not a mapping, lacks ``names`` or ``train``/``val``, or its
            ``nc``, ``kpt_shape``, ``category_ids`` or keypoint names disagree with it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data: YOLO dataset file {str(path)!r} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"data: {str(path)!r} is not valid YAML ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"data: {str(path)!r} must be a YAML mapping with train, val and names")
    root = _root(path, config.get("path"))
    names = _names(config.get("names"), path)
    if "nc" in config and int(config["nc"]) != len(names):
        raise ValueError(f"data: {str(path)!r} says nc: {config['nc']} but names has {len(names)} entries")
    splits = {}
    for split in ("train", "val", "test", *(k for k in config if k not in ("train", "val", "test"))):
        entry = config.get(split)
        if (split in ("train", "val", "test") or _names_images(root, entry)) and entry:
            splits[split] = [str(e) for e in entry] if isinstance(entry, list) else [str(entry)]
    if not splits:
        raise ValueError(f"data: {str(path)!r} names no images (keys train:, val:)")
    ids = config.get("category_ids")
    category_ids = [int(i) for i in ids] if ids is not None else list(range(1, len(names) + 1))
    if len(category_ids) != len(names) or len(set(category_ids)) != len(category_ids):
        raise ValueError(f"data: {str(path)!r}: category_ids must be {len(names)} distinct ids, got {ids}")
    kpt_shape, keypoint_names, skeleton = None, None, None
    if config.get("kpt_shape") is not None:
        shape = [int(v) for v in config["kpt_shape"]]
        if len(shape) != 2 or shape[0] < 1 or shape[1] not in (2, 3):
            raise ValueError(f"data: {str(path)!r}: kpt_shape must be [K, 2] or [K, 3], got {config['kpt_shape']}")
        kpt_shape = (shape[0], shape[1])
        keypoint_names = _keypoint_names(config.get("kpt_names"), shape[0], path)
        skeleton = config.get("skeleton")
        if skeleton is None and tuple(keypoint_names) == COCO_KEYPOINT_NAMES:
            skeleton = [list(pair) for pair in COCO_SKELETON]
    return YoloDataset(path, root, splits, names, category_ids, kpt_shape, keypoint_names, skeleton)


def _root(path: Path, value: Any) -> Path:
    if not value:
        return path.parent
    root = Path(str(value)).expanduser()
    candidates = [root] if root.is_absolute() else [path.parent / root, Path.cwd() / root]
    datasets_dir = _ultralytics_datasets_dir()
    if datasets_dir is not None and not root.is_absolute():
        candidates.append(datasets_dir / root)  # where ultralytics itself resolves a relative path
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"data: {str(path)!r} says path: {value}, which is not a folder ({candidates[0]})")


def _ultralytics_datasets_dir() -> Path | None:
    """``datasets_dir`` of ultralytics' settings file (``$YOLO_CONFIG_DIR`` or ``~/.config/Ultralytics``), if any."""
    folder = Path(os.environ.get("YOLO_CONFIG_DIR") or Path.home() / ".config" / "Ultralytics")
    try:
        value = json.loads((folder / "settings.json").read_text()).get("datasets_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(value) if isinstance(value, str) and value else None


def _names(value: Any, path: Path) -> list[str]:
    if isinstance(value, dict):
        indices = sorted(int(k) for k in value)
        if indices != list(range(len(indices))):
            raise ValueError(f"data: {str(path)!r}: names must be indexed 0..n-1, got indices {indices}")
        return [str(value[k] if k in value else value[str(k)]) for k in indices]
    if isinstance(value, list) and value:
        return [str(v) for v in value]
    raise ValueError(f"data: {str(path)!r} needs names: a list of class names or a mapping {{0: name, ...}}")


def _keypoint_names(value: Any, count: int, path: Path) -> list[str]:
    if isinstance(value, dict) and value:  # ultralytics writes {class index: [names]}
        value = next(iter(value.values()))
    if value is None:
        return list(COCO_KEYPOINT_NAMES) if count == 17 else [f"keypoint_{k}" for k in range(count)]
    names = [str(v) for v in value]
    if len(names) != count:
        raise ValueError(f"data: {str(path)!r}: kpt_names has {len(names)} names but kpt_shape says {count}")
    return names


def _names_images(root: Path, entry: Any) -> bool:
    """Whether an extra key (``minival: images/minival``) is a split: paths that exist under ``root``
    (``download: https://...`` and the other keys ultralytics files carry are not)."""
    items = entry if isinstance(entry, list) else [entry]
    return bool(items) and all(
        isinstance(i, str) and "\n" not in i and "://" not in i and i.strip() and _resolve(root, i).exists()
        for i in items
    )


@export("data.yolo_label_path")
def yolo_label_path(image: str | os.PathLike[str]) -> Path:
    """The label file of an image: the last ``images`` folder of its path becomes ``labels``, the
    suffix ``.txt`` (ultralytics' rule)."""
    parts = list(Path(image).parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


@export("data.yolo_split_images")
def yolo_split_images(dataset: YoloDataset, split: str) -> list[Path]:
    """The image files of ``split``: every image under a folder entry (sorted), and the lines of
    a ``.txt`` entry (``./``-prefixed lines are relative to the list file, others to ``root``).

    Raises:
        ValueError: the dataset has no such split.
        FileNotFoundError: an entry does not exist, or the split holds no image.
    """
    if split not in dataset.splits:
        raise ValueError(
            f"split={split!r} is not in {str(dataset.yaml)!r}; it has {', '.join(dataset.splits) or 'none'}"
        )
    images: list[Path] = []
    for entry in dataset.splits[split]:
        where = _resolve(dataset.root, entry)
        if where.is_dir():
            images.extend(sorted(p for p in where.rglob("*") if p.suffix.lower() in YOLO_IMAGE_SUFFIXES))
        elif where.is_file() and where.suffix.lower() == ".txt":
            for line in where.read_text().splitlines():
                line = line.strip()
                if line:
                    images.append(where.parent / line[2:] if line.startswith("./") else _resolve(dataset.root, line))
        elif where.is_file():
            images.append(where)
        else:
            raise FileNotFoundError(f"data: {split}: {entry!r} in {str(dataset.yaml)!r} does not exist ({where})")
    if not images:
        raise FileNotFoundError(f"data: split {split!r} of {str(dataset.yaml)!r} holds no images")
    return images


def _resolve(root: Path, entry: str) -> Path:
    path = Path(entry).expanduser()
    return path if path.is_absolute() else root / path


@export("data.yolo_to_coco")
def yolo_to_coco(
    data: str | os.PathLike[str] | YoloDataset, split: str, *, problems: ProblemSink | None = None
) -> tuple[dict[str, Any], Path]:
    """One split of a YOLO dataset as a COCO dict, and the folder its ``file_name`` values are
    relative to (the dataset's ``root``).

    Boxes become ``[x, y, w, h]`` pixels (``area = w * h``), pose keypoints flat ``[x, y, v]``
    pixel triples with ``num_keypoints``; polygon labels keep their polygon as
    ``segmentation``. With ``problems``, each annotation records ``"origin": ".../labels/x.txt:line N"``.

    Args:
        data: the dataset file, its folder, or a :class:`YoloDataset`.
        split: ``train``, ``val``, ``test`` or another split key of the file.
        problems: when given, bad label lines and unreadable images are passed to it as
            ``(kind, file, record, message)`` and left out; by default they raise.

    Raises:
        ValueError: a label line is malformed (wrong count, not numbers, unknown class).
        FileNotFoundError: an image cannot be opened to read its size.
    """
    dataset = data if isinstance(data, YoloDataset) else read_yolo_yaml(_yaml_of(data))
    images = yolo_split_images(dataset, split)
    keypoint_dims = dataset.kpt_shape[1] if dataset.kpt_shape else 0
    categories = []
    for name, category_id in zip(dataset.names, dataset.category_ids, strict=True):
        category: dict[str, Any] = {"id": category_id, "name": name, "supercategory": "none"}
        if dataset.kpt_shape is not None:
            category["keypoints"] = list(dataset.keypoint_names or [])
            category["skeleton"] = dataset.skeleton or []
        categories.append(category)
    coco: dict[str, Any] = {
        "info": {"description": f"converted from the YOLO dataset {dataset.yaml} ({split})"},
        "images": [],
        "annotations": [],
        "categories": categories,
    }
    for image_path in images:
        size = _image_size(image_path, problems)
        if size is None:
            continue
        width, height = size
        image_id = len(coco["images"]) + 1
        file_name = _relative(image_path, dataset.root)
        coco["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        label_file = yolo_label_path(image_path)
        if not label_file.is_file():
            continue
        for line_number, line in enumerate(label_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            origin = f"{label_file}:line {line_number}"
            try:
                annotation = _annotation(line, dataset, keypoint_dims, width, height)
            except ValueError as error:
                if problems is None:
                    raise ValueError(f"{label_file}:{line_number}: {error}") from None
                problems("bad_label", str(label_file), f"line {line_number}", str(error))
                continue
            annotation.update(id=len(coco["annotations"]) + 1, image_id=image_id)
            if problems is not None:
                annotation["origin"] = origin
            coco["annotations"].append(annotation)
    return coco, dataset.root


def _yaml_of(data: str | os.PathLike[str]) -> Path:
    found = find_yolo_yaml(data)
    if found is None:
        raise FileNotFoundError(
            f"data={str(data)!r}: no YOLO dataset file (a .yaml, or {' or '.join(YAML_NAMES)} in the folder)"
        )
    return found


def _image_size(path: Path, problems: ProblemSink | None) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        if problems is None:
            raise FileNotFoundError(f"image {str(path)!r} listed in the YOLO dataset does not exist") from None
        problems("missing_file", str(path), "", "the image file does not exist")
    except Exception as error:  # Pillow raises many types on damaged headers
        if problems is None:
            raise ValueError(f"image {str(path)!r}: cannot read its size ({error})") from None
        problems("corrupt_image", str(path), "", f"cannot open the image: {error}")
    return None


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path.resolve())


def _annotation(line: str, dataset: YoloDataset, keypoint_dims: int, width: int, height: int) -> dict[str, Any]:
    fields = line.split()
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise ValueError(f"label {line.strip()!r}: every field must be a number") from None
    label = values[0]
    if label != int(label) or not 0 <= label < len(dataset.names):
        raise ValueError(f"class {fields[0]} is not an index into the {len(dataset.names)} names")
    numbers = values[1:]
    annotation: dict[str, Any] = {"category_id": dataset.category_ids[int(label)], "iscrowd": 0}
    if dataset.kpt_shape is not None:
        count, dims = dataset.kpt_shape
        if len(numbers) != 4 + count * dims:
            raise ValueError(
                f"a pose label needs class, 4 box numbers and {count}x{dims} keypoint numbers "
                f"({5 + count * dims} fields), got {len(fields)}"
            )
        points = numbers[4:]
        keypoints = []
        for k in range(count):
            x, y = points[k * dims] * width, points[k * dims + 1] * height
            if dims == 3:
                v = points[k * dims + 2]
                if v not in (0, 1, 2):
                    raise ValueError(f"keypoint {k} has visibility {v:g}; expected 0, 1 or 2")
            else:
                v = 0 if points[k * dims] == 0 and points[k * dims + 1] == 0 else 2
            keypoints.extend([x, y, int(v)] if v else [0.0, 0.0, 0])
        annotation["keypoints"] = keypoints
        annotation["num_keypoints"] = sum(1 for v in keypoints[2::3] if v > 0)
    elif len(numbers) != 4:
        if len(numbers) < 6 or len(numbers) % 2:
            raise ValueError(
                f"a label is 'class cx cy w h' (5 fields) or a polygon 'class x1 y1 x2 y2 ...' (an odd number >= 7); "
                f"got {len(fields)} fields"
            )
        xs, ys = numbers[0::2], numbers[1::2]
        polygon = [v for x, y in zip(xs, ys, strict=True) for v in (x * width, y * height)]
        x0, y0, x1, y1 = min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height
        annotation.update(bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0), segmentation=[polygon])
        return annotation
    cx, cy, w, h = numbers[:4]
    box_w, box_h = w * width, h * height
    annotation["bbox"] = [cx * width - box_w / 2, cy * height - box_h / 2, box_w, box_h]
    annotation["area"] = box_w * box_h
    return annotation


@export("data.write_yolo")
def write_yolo(
    out: str | os.PathLike[str],
    splits: dict[str, tuple[dict[str, Any], Path]],
    *,
    place_image: Callable[[Path, Path], None],
) -> Path:
    """Write COCO splits as a YOLO dataset under ``out``: ``images/<split>/``, ``labels/<split>/*.txt``
    and ``data.yaml``; returns the dataset file.

    Args:
        splits: ``{split: (COCO dict, folder its file_name values are relative to)}``; every
            split must have the same categories. Crowd annotations are left out (YOLO has none).
        place_image: ``place_image(source, destination)`` puts an image file in the new
            dataset (a hard link or a copy).

    Raises:
        ValueError: the splits' categories differ, or a keypoint category's count differs.
    """
    out = Path(out)
    categories = _same_categories(splits)
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    with_keypoints = [c for c in categories if c.get("keypoints")]
    count = len(with_keypoints[0]["keypoints"]) if with_keypoints else 0
    if any(len(c["keypoints"]) != count for c in with_keypoints):
        raise ValueError("YOLO pose datasets have one kpt_shape; these categories have different keypoint counts")
    config: dict[str, Any] = {}
    for split, (coco, images_root) in splits.items():
        by_image: dict[int, list[dict[str, Any]]] = {}
        for annotation in coco["annotations"]:
            if not annotation.get("iscrowd", 0):
                by_image.setdefault(annotation["image_id"], []).append(annotation)
        for image in coco["images"]:
            relative = _split_relative(image["file_name"], split)
            destination = out / "images" / split / relative
            place_image(images_root / image["file_name"], destination)
            lines = [
                _label_line(a, label_of[a["category_id"]], image["width"], image["height"], count)
                for a in by_image.get(image["id"], [])
            ]
            label_file = out / "labels" / split / Path(relative).with_suffix(".txt")
            label_file.parent.mkdir(parents=True, exist_ok=True)
            label_file.write_text("".join(line + "\n" for line in lines))
        config[split] = f"images/{split}"
    config["nc"] = len(categories)
    config["names"] = {i: c["name"] for i, c in enumerate(categories)}
    config["category_ids"] = [c["id"] for c in categories]
    if with_keypoints:
        names = list(with_keypoints[0]["keypoints"])
        config["kpt_shape"] = [count, 3]
        flips = dict(keypoint_flip_pairs(names))
        flips.update({j: i for i, j in list(flips.items())})
        config["flip_idx"] = [flips.get(k, k) for k in range(count)]
        config["kpt_names"] = {0: names}
        config["skeleton"] = [list(pair) for pair in with_keypoints[0].get("skeleton", [])]
    path = out / "data.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
    return path


def _same_categories(splits: dict[str, tuple[dict[str, Any], Path]]) -> list[dict[str, Any]]:
    listed = [sorted(coco["categories"], key=lambda c: c["id"]) for coco, _ in splits.values()]
    if not listed:
        raise ValueError("splits: nothing to write")
    first = [(c["id"], c["name"]) for c in listed[0]]
    for name, categories in zip(splits, listed, strict=True):
        if [(c["id"], c["name"]) for c in categories] != first:
            raise ValueError(f"split {name!r} has categories {categories} unlike {first}")
    return listed[0]


def _split_relative(file_name: str, split: str) -> str:
    """``file_name`` without a leading ``images/`` and ``<split>/`` (so converted layouts do not nest)."""
    parts = Path(file_name).parts
    if Path(file_name).is_absolute():
        return Path(file_name).name
    while len(parts) > 1 and parts[0] in ("images", split):
        parts = parts[1:]
    return Path(*parts).as_posix()


def _label_line(annotation: dict[str, Any], label: int, width: int, height: int, keypoints: int) -> str:
    x, y, w, h = annotation["bbox"]
    numbers = [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
    if keypoints:
        values: Sequence[float] = annotation.get("keypoints") or [0.0] * (3 * keypoints)
        for k in range(keypoints):
            px, py, v = values[3 * k : 3 * k + 3]
            numbers.extend([px / width, py / height, v] if v else [0.0, 0.0, 0])
    return " ".join([str(label), *(_number(v) for v in numbers)])


def _number(value: float) -> str:
    # Six decimals of a normalised coordinate: 1e-6 of the side, well under a pixel.
    return str(int(value)) if float(value).is_integer() and abs(value) <= 2 else f"{value:.6f}".rstrip("0").rstrip(".")
