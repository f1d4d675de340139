"""Pascal VOC annotations: read one XML file, convert a VOC folder to COCO JSON.

VOC stores one ``<annotation>`` XML per image with its ``filename``, ``size`` and a list of
``<object>`` elements (``name``, ``bndbox``, ``difficult``, ``truncated``, ``occluded``).

Coordinates: VOC's ``bndbox`` values are 1-based pixel indices, both ends inclusive, so a box
with ``xmin=1, xmax=W`` covers the whole width. sightkit's boxes are continuous ``xyxy``
coordinates with the image spanning ``[0, W] x [0, H]``; the reader therefore subtracts 1
from ``xmin`` and ``ymin`` and keeps ``xmax`` and ``ymax`` (a one-pixel box ``xmin=xmax=5``
becomes ``[4, 5]``, one pixel wide). This is detectron2's reading of VOC; pass
``one_based=False`` for files whose coordinates are already continuous.

Reference: Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sightkit._api import export
from sightkit.ops.boxes import box_convert


@export("data.VocObject")
@dataclass(frozen=True)
class VocObject:
    """One ``<object>`` of a VOC annotation.

    Attributes:
        name: the class name as written in the file.
        box: ``(x1, y1, x2, y2)`` in absolute continuous pixel coordinates (see the module
            docstring for the 1-based conversion).
        difficult: VOC's "difficult" flag (excluded from VOC's own AP, kept here).
        truncated: the object extends beyond the image.
        occluded: the object is partly hidden (optional in VOC files; ``False`` when absent).
    """

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = False
    occluded: bool = False


@export("data.VocAnnotation")
@dataclass(frozen=True)
class VocAnnotation:
    """One VOC XML file.

    Attributes:
        path: the XML file that was read.
        filename: the image file name, relative to the image folder.
        width, height: the image size in pixels, ``None`` when the file has no usable
            ``<size>`` (some tools write zeros).
        depth: the number of channels, ``None`` when absent.
        objects: the annotated objects in file order.
    """

    path: Path
    filename: str
    width: int | None
    height: int | None
    depth: int | None
    objects: tuple[VocObject, ...]


@export("data.read_voc")
def read_voc(path: str | os.PathLike[str], *, one_based: bool = True) -> VocAnnotation:
    """Read one Pascal VOC XML annotation file.

    Args:
        path: the ``.xml`` file.
        one_based: the ``bndbox`` values are VOC's 1-based inclusive pixel indices (the
            standard); ``False`` reads them as continuous coordinates unchanged.

    Returns:
        A :class:`VocAnnotation` with boxes in ``xyxy`` absolute pixel coordinates.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the XML is malformed, is not an ``<annotation>``, lacks a required field,
            or has an inverted box; the message names the file (and the object).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VOC annotation file not found: {path}")
    try:
        # Python's bundled expat (>= 2.4.1) rejects entity-expansion bombs, so the standard
        # parser is safe for untrusted annotation files.
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: malformed VOC XML ({err})") from err
    if root.tag != "annotation":
        raise ValueError(f"{path}: expected a VOC <annotation> root element, got <{root.tag}>")

    filename = _text(root, "filename")
    if filename is None:
        raise ValueError(f"{path}: missing <filename>")
    width = _int(root, "size/width", path)
    height = _int(root, "size/height", path)
    depth = _int(root, "size/depth", path)
    objects = tuple(_read_object(element, index, path, one_based) for index, element in enumerate(root.iter("object")))
    return VocAnnotation(
        path=path,
        filename=filename,
        width=width or None,
        height=height or None,
        depth=depth or None,
        objects=objects,
    )


@export("data.voc_to_coco")
def voc_to_coco(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    image_dir: str | os.PathLike[str] | None = None,
    image_set: str | None = None,
    categories: Sequence[str] | None = None,
    one_based: bool = True,
    problems: Callable[[str, str, str, str], None] | None = None,
) -> dict[str, Any]:
    """Convert a Pascal VOC folder to a COCO detection dataset (a JSON-ready dict).

    Layout: the VOC devkit layout ``root/Annotations/*.xml`` with images in
    ``root/JPEGImages`` (and image sets in ``root/ImageSets/Main/NAME.txt``), or a flat
    folder of ``*.xml`` files next to their images. When the image an XML names is not
    there but one with the XML's stem is (tools often leave a stale ``<filename>``), that
    file is used.

    Args:
        root: the VOC folder.
        out: where to write the COCO JSON (parent folders are created); ``None`` writes nothing.
        image_dir: the folder the XML ``filename`` values are relative to; by default
            ``root/JPEGImages`` when it exists, else ``root``. Only read for images whose XML
            lacks a usable ``<size>`` (the size is then read from the image header).
        image_set: convert only the images listed in ``root/ImageSets/Main/{image_set}.txt``
            (one file stem per line, as in the VOC devkit).
        categories: class names in category-id order (ids 1, 2, ...); an object whose name
            is not listed is an error. By default every name found, sorted, so the ids do
            not depend on file order.
        one_based: see :func:`read_voc`.
        problems: when given, an unreadable XML file, a missing image set entry, an unlisted
            class or a size that cannot be found is passed to it as ``(kind, file, record, message)``
            and left out, and each annotation records ``"origin"`` (``"FILE.xml:object N"``);
            by default they raise.

    Returns:
        A COCO dict with ``images`` (ids 1..N in sorted XML order, ``file_name`` from the
        XML), ``annotations`` (``bbox`` as ``[x, y, w, h]``, ``area = w * h``,
        ``iscrowd = 0``, and VOC's flags kept as ``difficult``, ``truncated`` and
        ``ignore = difficult``) and ``categories`` (``id``, ``name``, ``supercategory``).
        COCO evaluation counts difficult objects like any other (it only ignores crowd
        regions); a consumer that wants VOC's protocol filters on ``ignore``.

    Raises:
        FileNotFoundError: ``root``, the image set file or a needed image is missing.
        ValueError: no XML files, an unlisted class name, or a malformed XML (from :func:`read_voc`).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VOC folder not found: {root}")
    annotation_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    if image_dir is None:
        image_dir = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    image_dir = Path(image_dir)

    if image_set is not None:
        set_file = root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not set_file.is_file():
            raise FileNotFoundError(f"image_set {image_set!r}: file not found: {set_file}")
        stems = [line.split()[0] for line in set_file.read_text().splitlines() if line.strip()]
        xml_files = [annotation_dir / f"{stem}.xml" for stem in stems]
        if problems is not None:
            for missing in [p for p in xml_files if not p.is_file()]:
                message = f"lists {missing.stem!r} but {missing} does not exist"
                problems("bad_label", str(set_file), missing.stem, message)
            xml_files = [p for p in xml_files if p.is_file()]
    else:
        xml_files = sorted(annotation_dir.glob("*.xml"))
    if not xml_files:
        raise ValueError(f"root must contain VOC *.xml files (in {annotation_dir}), found none")

    voc = []
    for path in xml_files:
        try:
            voc.append(read_voc(path, one_based=one_based))
        except (FileNotFoundError, ValueError) as error:
            if problems is None:
                raise
            problems("bad_label", str(path), "", str(error))
    names = sorted({obj.name for ann in voc for obj in ann.objects}) if categories is None else list(categories)
    if len(set(names)) != len(names):
        raise ValueError(f"categories must be distinct names, got {names}")
    category_id = {name: index + 1 for index, name in enumerate(names)}

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for ann in voc:
        file_name = _image_file_name(image_dir, ann)
        width, height = ann.width, ann.height
        try:
            if width is None or height is None:
                width, height = _image_size(image_dir / file_name, ann.path)
        except FileNotFoundError as error:
            if problems is None:
                raise
            problems("missing_file", str(ann.path), "", str(error))
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        if not ann.objects:
            continue
        xywh = box_convert(torch.tensor([obj.box for obj in ann.objects], dtype=torch.float64), "xyxy", "xywh")
        for index, (obj, (x, y, w, h)) in enumerate(zip(ann.objects, xywh.tolist(), strict=True)):
            if obj.name not in category_id:
                message = f"{ann.path}: class {obj.name!r} is not in categories {names}"
                if problems is None:
                    raise ValueError(message)
                problems("unknown_category", str(ann.path), f"object {index}", message)
                continue
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_id[obj.name],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "ignore": int(obj.difficult),
                "difficult": int(obj.difficult),
                "truncated": int(obj.truncated),
            }
            if problems is not None:
                annotation["origin"] = f"{ann.path}:object {index}"
            annotations.append(annotation)

    coco = {
        "info": {"description": f"converted from Pascal VOC annotations in {annotation_dir}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": category_id[name], "name": name, "supercategory": "none"} for name in names],
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(coco))
    return coco


def _read_object(element: ET.Element, index: int, path: Path, one_based: bool) -> VocObject:
    where = f"{path}: object {index}"
    name = _text(element, "name")
    if name is None:
        raise ValueError(f"{where}: missing <name>")
    coords = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        value = _text(element, f"bndbox/{tag}")
        if value is None:
            raise ValueError(f"{where} ({name!r}): missing <bndbox>/<{tag}>")
        try:
            coords.append(float(value))
        except ValueError:
            raise ValueError(f"{where} ({name!r}): <{tag}> must be a number, got {value!r}") from None
    xmin, ymin, xmax, ymax = coords
    if xmax < xmin or ymax < ymin:
        raise ValueError(f"{where} ({name!r}): inverted box xmin={xmin}, ymin={ymin}, xmax={xmax}, ymax={ymax}")
    if one_based:
        xmin, ymin = xmin - 1.0, ymin - 1.0
    return VocObject(
        name=name,
        box=(xmin, ymin, xmax, ymax),
        difficult=_flag(element, "difficult", where),
        truncated=_flag(element, "truncated", where),
        occluded=_flag(element, "occluded", where),
    )


def _text(element: ET.Element, tag: str) -> str | None:
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        return None
    return found.text.strip()


def _int(element: ET.Element, tag: str, path: Path) -> int | None:
    value = _text(element, tag)
    if value is None:
        return None
    try:
        # Some tools write sizes as "500.0".
        return int(float(value))
    except ValueError:
        raise ValueError(f"{path}: <{tag}> must be an integer, got {value!r}") from None


def _flag(element: ET.Element, tag: str, where: str) -> bool:
    value = (_text(element, tag) or "0").lower()
    if value in ("0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise ValueError(f"{where}: <{tag}> must be 0 or 1, got {value!r}")


def _image_size(image_path: Path, xml_path: Path) -> tuple[int, int]:
    if not image_path.is_file():
        raise FileNotFoundError(f"{xml_path}: <size> is missing and the image is not found at {image_path}")
    with Image.open(image_path) as image:
        return image.size


#: Image suffixes looked for when an XML's ``<filename>`` is stale.
VOC_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _image_file_name(image_dir: Path, ann: VocAnnotation) -> str:
    """The XML's ``<filename>``, or the image with the XML's stem when the named file is not there."""
    if (image_dir / ann.filename).is_file():
        return ann.filename
    for suffix in VOC_IMAGE_SUFFIXES:
        for candidate in (ann.path.stem + suffix, ann.path.stem + suffix.upper()):
            if (image_dir / candidate).is_file():
                return candidate
    return ann.filename


@export("data.voc_splits")
def voc_splits(root: str | os.PathLike[str]) -> list[str]:
    """The image sets of a VOC folder: the ``ImageSets/Main/*.txt`` names without a class prefix
    (``train``, ``val``, ``trainval``, ``test``, ...; not ``dog_train``), sorted."""
    folder = Path(root) / "ImageSets" / "Main"
    return sorted(p.stem for p in folder.glob("*.txt") if "_" not in p.stem) if folder.is_dir() else []


@export("data.write_voc")
def write_voc(
    out: str | os.PathLike[str],
    splits: dict[str, tuple[dict[str, Any], Path]],
    *,
    place_image: Callable[[Path, Path], None],
) -> Path:
    """Write COCO detection splits as a Pascal VOC folder: ``JPEGImages/`` (flat, the images'
    base names), ``Annotations/<stem>.xml`` (1-based inclusive ``bndbox``, see the module
    docstring; ``difficult``/``truncated`` from the annotation's flags) and
    ``ImageSets/Main/<split>.txt``; returns ``out``. Crowd annotations are left out.

    Args:
        splits: ``{split: (COCO dict, folder its file_name values are relative to)}``.
        place_image: ``place_image(source, destination)`` puts an image file in the new dataset.

    Raises:
        ValueError: two different images share a base name (VOC's image folder is flat), or
            an annotation has keypoints (VOC has none).
    """
    out = Path(out)
    placed: dict[str, Path] = {}
    for split, (coco, images_root) in splits.items():
        names = {c["id"]: c["name"] for c in coco["categories"]}
        by_image: dict[int, list[dict[str, Any]]] = {}
        for annotation in coco["annotations"]:
            if annotation.get("keypoints") and any(annotation["keypoints"][2::3]):
                raise ValueError("format=voc: VOC has no keypoints; convert a pose dataset to coco or yolo")
            if not annotation.get("iscrowd", 0):
                by_image.setdefault(annotation["image_id"], []).append(annotation)
        stems = []
        for image in coco["images"]:
            source = images_root / image["file_name"]
            name = Path(image["file_name"]).name
            if placed.setdefault(name, source) != source:
                raise ValueError(
                    f"format=voc: {placed[name]} and {source} would both be JPEGImages/{name} (VOC's folder is flat)"
                )
            place_image(source, out / "JPEGImages" / name)
            xml = _voc_xml(name, image["width"], image["height"], by_image.get(image["id"], []), names)
            (out / "Annotations").mkdir(parents=True, exist_ok=True)
            (out / "Annotations" / f"{Path(name).stem}.xml").write_text(xml)
            stems.append(Path(name).stem)
        sets = out / "ImageSets" / "Main"
        sets.mkdir(parents=True, exist_ok=True)
        (sets / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in stems))
    return out


def _voc_xml(file_name: str, width: int, height: int, annotations: list[dict[str, Any]], names: dict[int, str]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for annotation in annotations:
        x, y, w, h = annotation["bbox"]
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = names[annotation["category_id"]]
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = str(int(annotation.get("truncated", 0)))
        ET.SubElement(element, "difficult").text = str(int(annotation.get("difficult", 0)))
        box = ET.SubElement(element, "bndbox")
        # Continuous [x, x + w] is 1-based inclusive xmin = x + 1, xmax = x + w (see the module docstring).
        for tag, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, tag).text = _coordinate(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _coordinate(value: float) -> str:
    # Integers as VOC writes them; sub-pixel values keep 2 decimals (read back with float()).
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")
