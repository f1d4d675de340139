"""A small real detection dataset: deepforest's aerial tree-crown samples, as COCO JSON, checked.

    python scripts/deepforest_sample.py [--out runs/data/deepforest] [--val OSBS_029] [--one-class]

The deepforest wheel (Weinstein et al., "DeepForest: A Python package for RGB deep learning
tree crown delineation", Methods Ecol. Evol. 2020) ships NEON aerial RGB tiles with tree crowns
annotated as Pascal VOC XML in ``deepforest/data/``. This script downloads the wheel with the
configured pip client (``pip download --no-deps``, nothing else is installed), converts the
VOC annotations with :func:`sightkit.data.voc_to_coco`, copies the images (TIFF becomes PNG)
and writes the layout sightkit's COCO datasets read::

    OUT/images/*.png
    OUT/annotations/train.json     every image but the --val ones
    OUT/annotations/val.json       the --val images (default: OSBS_029, deepforest's test tile)

then runs :func:`sightkit.data.check_dataset` on it and prints a summary. The CSV files in the
wheel repeat a subset of the XML boxes, so the XML files are the source. The images are data,
not code: OUT lives under ``runs/``, which git ignores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image
from rich.console import Console
from rich.table import Table

from sightkit.data import check_dataset, read_voc, voc_to_coco

DATA_PREFIX = "deepforest/data/"
#: Formats that every sightkit image reader decodes; anything else is converted to PNG.
PORTABLE = {".png", ".jpg", ".jpeg"}


def download_wheel(folder: Path) -> Path:
    """``pip download`` deepforest's wheel (without dependencies) into ``folder``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder)]
    subprocess.run([*command, "deepforest"], check=True)
    wheels = sorted(folder.glob("deepforest-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download produced no deepforest wheel in {folder}")
    return wheels[-1]


def extract_voc(wheel: Path, folder: Path) -> list[str]:
    """Extract the VOC XML files of the wheel's data folder and the images they name into
    ``folder``; return the XML stems. Exits with a message when the wheel has no such data."""
    with zipfile.ZipFile(wheel) as archive:
        members = {PurePosixPath(name).name: name for name in archive.namelist() if name.startswith(DATA_PREFIX)}
        xml_names = sorted(name for name in members if name.endswith(".xml"))
        if not xml_names:
            raise SystemExit(f"{wheel.name} has no Pascal VOC samples under {DATA_PREFIX}; nothing to convert")
        folder.mkdir(parents=True, exist_ok=True)
        for name in xml_names:
            (folder / name).write_bytes(archive.read(members[name]))
        for name in xml_names:
            image_name = read_voc(folder / name).filename
            if image_name not in members:
                raise SystemExit(f"{wheel.name}: {name} names the image {image_name!r}, which the wheel lacks")
            (folder / image_name).write_bytes(archive.read(members[image_name]))
    return [PurePosixPath(name).stem for name in xml_names]


def write_dataset(coco: dict[str, Any], source: Path, out: Path, val_names: set[str], one_class: bool) -> None:
    """Copy the images to ``out/images`` and write ``annotations/{train,val}.json``."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for image in coco["images"]:
        src = source / image["file_name"]
        name = src.name if src.suffix.lower() in PORTABLE else f"{src.stem}.png"
        with Image.open(src) as pixels:
            pixels.convert("RGB").save(out / "images" / name)
        image["file_name"] = name
    if one_class:
        coco["categories"] = [{"id": 1, "name": "Tree", "supercategory": "none"}]
        for ann in coco["annotations"]:
            ann["category_id"] = 1
    for split in ("train", "val"):
        images = [im for im in coco["images"] if (Path(im["file_name"]).stem in val_names) == (split == "val")]
        ids = {im["id"] for im in images}
        annotations = [ann for ann in coco["annotations"] if ann["image_id"] in ids]
        data = {**coco, "images": images, "annotations": annotations}
        (out / "annotations" / f"{split}.json").write_text(json.dumps(data))


def summary(out: Path) -> Table:
    table = Table(title=f"deepforest sample in {out}")
    for column in ("split", "image", "size", "boxes", "boxes per category", "median box (px)"):
        table.add_column(column)
    for split in ("train", "val"):
        data = json.loads((out / "annotations" / f"{split}.json").read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        for image in data["images"]:
            anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
            per_category = Counter(names[a["category_id"]] for a in anns)
            sides = sorted((a["bbox"][2] * a["bbox"][3]) ** 0.5 for a in anns)
            median = f"{sides[len(sides) // 2]:.0f}" if sides else "-"
            size = f"{image['width']}x{image['height']}"
            counts = ", ".join(f"{k} {v}" for k, v in sorted(per_category.items()))
            table.add_row(split, image["file_name"], size, str(len(anns)), counts, median)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/data/deepforest"), help="output dataset folder")
    parser.add_argument("--val", nargs="*", default=["OSBS_029"], help="image stems for annotations/val.json")
    parser.add_argument("--one-class", action="store_true", help="merge all classes (Tree, Alive, Dead) into Tree")
    args = parser.parse_args(argv)
    console = Console()

    with tempfile.TemporaryDirectory(prefix="deepforest-") as tmp:
        tmp = Path(tmp)
        with console.status("downloading the deepforest wheel"):
            wheel = download_wheel(tmp / "wheel")
        stems = extract_voc(wheel, tmp / "voc")
        unknown = set(args.val) - set(stems)
        if unknown:
            raise SystemExit(f"--val names {sorted(unknown)} are not among the wheel's samples {stems}")
        coco = voc_to_coco(tmp / "voc")
        console.print(f"{wheel.name}: {len(stems)} annotated images, {len(coco['annotations'])} boxes")
        write_dataset(coco, tmp / "voc", args.out, set(args.val), args.one_class)

    console.print(summary(args.out))
    report = check_dataset(args.out)
    if report.ok:
        console.print(f"[green]check_dataset: no problems[/] in {report.images} images, {report.annotations} boxes")
        return 0
    console.print(report.table())
    return 1


if __name__ == "__main__":
    sys.exit(main())
