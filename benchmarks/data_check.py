"""check_dataset against a plain loop that opens and decodes every image with Pillow, one by one.

No library checks a COCO dataset as a whole, so the peer is the loop a user would write:
``for image in coco["images"]: Image.open(path).load()`` plus a size comparison.
check_dataset does that and validates every record, in a thread pool (Pillow releases the
GIL while decoding). Both must find the same planted problems (one truncated file, one size
mismatch); the ratio shows what the threads buy on this machine's cores. ``--threads`` is the
list of check_dataset's decoding threads to measure at (default 1 and 2); figures in
``benchmarks/results/data_check.json``.

    python -m benchmarks data_check [--images 300] [--size 640x480] [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio
from benchmarks._timing import median_time
from sightkit.data import check_dataset


def make_dataset(root: Path, images: int, width: int, height: int) -> None:
    """JPEG images of smooth noise (realistic compressed sizes), one box each; image 0 is
    truncated and image 1's JSON size is wrong."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    coarse = rng.integers(0, 256, (images, height // 16, width // 16, 3), dtype=np.uint8)
    records, annotations = [], []
    for i in range(images):
        path = root / "images" / f"{i:05d}.jpg"
        Image.fromarray(coarse[i]).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)
        records.append({"id": i, "file_name": path.name, "width": width + (i == 1), "height": height})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 50, 40], "area": 2000})
    data = (root / "images" / "00000.jpg").read_bytes()
    (root / "images" / "00000.jpg").write_bytes(data[: len(data) // 2])
    coco = {"images": records, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations").mkdir()
    (root / "annotations" / "train.json").write_text(json.dumps(coco))


def plain_loop(root: Path) -> list[tuple[str, str]]:
    coco = json.loads((root / "annotations" / "train.json").read_text())
    problems = []
    for record in coco["images"]:
        path = root / "images" / record["file_name"]
        try:
            with Image.open(path) as image:
                image.load()
                if image.size != (record["width"], record["height"]):
                    problems.append(("size_mismatch", str(path)))
        except OSError:
            problems.append(("corrupt_image", str(path)))
    return problems


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks data_check", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    cores = len(os.sched_getaffinity(0))
    print(f"{args.images} JPEG images {width}x{height}, {cores} cores; median of {args.repeats} runs")
    results, summary = Results("data_check", args), []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root, args.images, width, height)
        report = check_dataset(root, workers=args.threads[0], progress=False)
        ours = sorted((p.kind, p.file) for p in report.problems)
        assert ours == sorted(plain_loop(root)), f"the two disagree: {ours} vs {sorted(plain_loop(root))}"
        for threads in args.threads:
            # the decoding threads of check_dataset's pool; torch's are set alike but do not matter here
            with results.at(threads) as entry:
                t_ours = median_time(lambda n=threads: check_dataset(root, workers=n, progress=False), args.repeats)
                t_loop = median_time(lambda: plain_loop(root), repeats=args.repeats)
                t_head = median_time(lambda: check_dataset(root, decode=False, progress=False), args.repeats)
                rate = args.images / t_ours
                print(f"check_dataset, full decode, {threads} threads: {t_ours * 1e3:8.1f} ms  ({rate:6.0f} images/s)")
                print(
                    f"plain Pillow loop, full decode:   {t_loop * 1e3:8.1f} ms  ({args.images / t_loop:6.0f} images/s)"
                )
                print(f"speed-up: {t_loop / t_ours:.2f}x; both find {len(ours)} problems: {[kind for kind, _ in ours]}")
                print(f"check_dataset, headers only (decode=false): {t_head * 1e3:8.1f} ms")
                summary.append(("check_dataset vs Pillow loop", threads, t_ours * 1e3, t_loop * 1e3))
                entry.update(
                    {
                        "ours_ms": round(t_ours * 1e3, 1),
                        "peer_ms": round(t_loop * 1e3, 1),
                        "headers_only_ms": round(t_head * 1e3, 1),
                        "ratio": ratio(t_loop, t_ours),
                    }
                )
    print_ratio_summary("dataset check, full decode", summary)
    results.write()
