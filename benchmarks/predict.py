"""Images per second through ``sightkit.load(weights)(folder)`` against the transformers
object-detection pipeline, with the same DETR-R50 weights at the same input size.

``python -m benchmarks predict [--images 16] [--height 320] [--width 480] [--batches 1 8]
[--precisions fp32 bf16] [--repeats 3] [--threads 1 2]``

The peer is transformers' ``DetrForObjectDetection`` with every parameter and buffer random
(offline: no hub), saved with ``save_pretrained``; ``sightkit.weights.import_weights`` turns
that folder into a sightkit weights file, so both run the same numbers. Both resize the
shorter side to ``--height`` (longer side at most ``--width``), normalise with ImageNet's
statistics and keep detections scoring 0.5 or more. The source is a folder of ``--images``
PNG files; each side reads, decodes, preprocesses, runs and postprocesses them all, in
batches of 1 and 8. sightkit runs at each ``--precisions`` (``fp32``, and ``bf16``: autocast
on the predictor's prepared bfloat16 copy, see ``bf16_predict``); the peer in float32, as its
pipeline runs. Median of ``--repeats`` passes; figures in ``benchmarks/results/predict.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio


def write_images(folder: Path, count: int, height: int, width: int) -> list[Path]:
    """``count`` PNG files of random rectangles on noise (decoding costs like a real picture's)."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        pixels = rng.integers(0, 64, (height, width, 3), dtype=np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, height - 40), rng.integers(0, width - 40)
            pixels[y : y + 40, x : x + 40] = rng.integers(64, 256, 3, dtype=np.uint8)
        path = folder / f"{k:04d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocator, one-off initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args(argv)

    import torch
    import transformers

    import sightkit
    from sightkit.weights import import_weights
    from tests.weights.peers import randomise

    transformers.utils.logging.set_verbosity_error()
    work = Path(tempfile.mkdtemp(prefix="predict_bench_"))
    (work / "images").mkdir()
    paths = write_images(work / "images", args.images, args.height, args.width)
    config = transformers.DetrConfig(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False)
    peer_model = randomise(transformers.DetrForObjectDetection(config)).eval()
    peer_model.save_pretrained(work / "peer")
    size = {"shortest_edge": args.height, "longest_edge": args.width}
    processor = transformers.DetrImageProcessor(size=size)
    peer = transformers.pipeline("object-detection", model=peer_model, image_processor=processor, device="cpu")
    weights = work / "detr_r50.safetensors"
    import_weights(str(work / "peer"), weights, imgsz=str(args.height), max_size=str(args.width))
    ours = sightkit.load(weights, "cpu")
    images = [str(p) for p in paths]

    results, rows = Results("predict", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            for batch in args.batches:
                with torch.inference_mode():
                    peer_s = median_seconds(lambda b=batch: peer(images, batch_size=b, threshold=0.5), args.repeats)
                    ours_s = {
                        precision: median_seconds(
                            lambda b=batch, p=precision: ours(images, batch=b, conf=0.5, precision=p, progress=False),
                            args.repeats,
                        )
                        for precision in args.precisions
                    }
                peer_ips = args.images / peer_s
                record: dict[str, float] = {"peer_images_per_s": round(peer_ips, 2)}
                for precision, seconds in ours_s.items():
                    suffix = "" if precision == "fp32" else f"_{precision}"
                    record[f"ours{suffix}_images_per_s"] = round(args.images / seconds, 2)
                    record[f"ratio{suffix}"] = ratio(peer_s, seconds)
                    print(f"batch {batch}: sightkit {precision} {args.images / seconds:.2f} images/s, transformers "
                          f"{peer_ips:.2f} images/s, ratio {peer_s / seconds:.2f}x", flush=True)  # fmt: skip
                    label = f"batch {batch}" if precision == "fp32" else f"batch {batch}, sightkit {precision}"
                    rows.append((label, threads, 1000 * seconds / args.images, 1000 * peer_s / args.images))
                entry[f"batch_{batch}"] = record
    print_ratio_summary("DETR-R50 predict, ms per image (sightkit.load vs transformers pipeline)", rows)
    results.write()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
