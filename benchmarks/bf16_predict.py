"""bfloat16 inference against float32: images per second through a detection predictor, and
what it costs in accuracy (COCO AP on a validation set, the largest box and score difference).

``python -m benchmarks bf16_predict WEIGHTS [WEIGHTS ...] --data FOLDER [FOLDER ...] [--images 64]
[--batch 8] [--repeats 7] [--threads 1 2]``

WEIGHTS are detection weights written by ``sightkit train detect`` (e.g. ``detr_r18_tiny`` and
``dino_r18_tiny`` trained on the synthetic shapes); ``--data`` the COCO folder they were
trained on, one for all or one per weights file. For each weights file, at each thread count,
in one process:

- speed: the first ``--images`` images of the folder, decoded once, through ``predictor.predict_frames``
  (preprocessing, model, postprocessing) in batches of ``--batch``, with ``precision="fp32"``
  and ``"bf16"`` (the predictor's copy of the model prepared for bfloat16, under autocast),
  alternating; the median over ``--repeats`` passes, as images/s;
- accuracy (once, at the first thread count): the task's own evaluation (``sightkit eval
  detect``: COCO AP with faster-coco-eval) of the whole validation split at each precision,
  and, over the timed images, each fp32 detection scoring at least ``--conf`` against its bf16
  counterpart (same class, largest IoU): the largest box difference in pixels and score
  difference, and the count without a counterpart at IoU 0.5.

How the weights of ``benchmarks/results/bf16_predict.json`` were made: from scratch (no
pretrained backbone), each on one CPU core (``OMP_NUM_THREADS=1``): ``detr_r18_tiny`` in 25
minutes (best AP 0.45, at step 5,500), ``dino_r18_tiny`` in 5 minutes (AP 0.23)::

    # detr_r18_tiny: 64-pixel shapes, one object of two classes, 5 queries. DETR's set matching
    # learns the classes slowly: with 3 objects, 3 classes and 20 queries (lr 1e-3) AP stayed ~0
    # after 5,000 steps, and with 1 object, 3 classes and 20 queries (lr 1e-4) it was 0.01 after 2,000.
    sightkit data synth shapes out=shapes_one images=1000 seed=0 size=64 classes=2 max_objects=1 \
        min_radius=0.2 max_radius=0.4
    sightkit train detect model=detr_r18_tiny data=shapes_one out=detr imgsz=64 max_size=80 \
        steps=6000 epochs=0 batch=8 lr=2e-4 backbone_lr_mult=1 warmup_steps=100 clip_grad_norm=0.1 \
        eval_every=500 seed=0 workers=0 'model_args={num_queries: 5}'
    # dino_r18_tiny: 96-pixel shapes, up to three objects of three classes
    sightkit data synth shapes out=shapes_easy images=800 seed=0 size=96 classes=3 max_objects=3 \
        min_radius=0.15 max_radius=0.3
    sightkit train detect model=dino_r18_tiny data=shapes_easy out=dino imgsz=96 max_size=128 \
        steps=400 epochs=0 batch=8 lr=1e-3 backbone_lr_mult=1 warmup_steps=60 clip_grad_norm=0 \
        eval_every=200 seed=0 workers=0
    python -m benchmarks bf16_predict detr/best.safetensors dino/best.safetensors \
        --data shapes_one shapes_easy --images 32 --repeats 5 --threads 1 2

bfloat16 pays where the CPU has bfloat16 instructions (AVX512-BF16, AMX; printed below) and
on CUDA from Ampere on; elsewhere autocast emulates it. The figures go to
``benchmarks/results/bf16_predict.json``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio
from sightkit.data.sources import Frame
from sightkit.ops import box_iou
from sightkit.tasks import runner
from sightkit.tasks.detect import DetectEvalConfig
from sightkit.tasks.registry import get_task
from sightkit.tasks.runner import load_for


def bf16_instructions() -> str:
    """The CPU's bfloat16 instruction sets, from /proc/cpuinfo's flags."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags.split()]
    return ", ".join(found) or "none (bf16 is emulated)"


def evaluate(weights: str, data: str, batch: int, precision: str) -> dict[str, float]:
    """``sightkit eval detect`` on the validation split at ``precision`` (its files go to a temporary folder)."""
    with tempfile.TemporaryDirectory() as out:
        config = DetectEvalConfig(weights=weights, data=data, batch=batch, precision=precision, device="cpu", out=out)
        return runner.evaluate(config, Console(file=io.StringIO()))


def detection_differences(predictor: object, frames: list[Frame], conf: float) -> dict[str, float]:
    """Each fp32 detection scoring at least ``conf`` against the bf16 detection of the same class
    that overlaps it most: the largest corner difference in pixels of the original image over
    those matched at IoU >= 0.5, the largest score difference, and how many found no match.
    (Raw outputs are not compared query by query: a two-stage detector such as DINO selects its
    queries by score, and a near tie can select another proposal under bf16.)"""
    fp32 = predictor.predict_frames(frames, predictor.settings(conf=conf, precision="fp32"))
    bf16 = predictor.predict_frames(frames, predictor.settings(conf=conf, precision="bf16"))
    box_gap, score_gap, unmatched, total = 0.0, 0.0, 0, 0
    for ours, theirs in zip(fp32, bf16, strict=True):
        for box, score, label in zip(ours.boxes, ours.scores, ours.labels, strict=True):
            total += 1
            same = theirs.labels == label
            if not same.any():
                unmatched += 1
                continue
            candidates = torch.as_tensor(theirs.boxes[same])
            iou = box_iou(torch.as_tensor(box)[None], candidates)[0]
            best = int(iou.argmax())
            if iou[best] < 0.5:
                unmatched += 1
                continue
            box_gap = max(box_gap, float((candidates[best] - torch.as_tensor(box)).abs().max()))
            score_gap = max(score_gap, abs(float(theirs.scores[same][best]) - float(score)))
    return {
        "detections": total,
        "unmatched": unmatched,
        "max_box_difference_px": box_gap,
        "max_score_difference": score_gap,
    }


def images_per_second(predictor: object, frames: list[Frame], batch: int, repeats: int) -> dict[str, float]:
    """Images/s at each precision: the median over ``repeats`` passes, fp32 and bf16 alternating
    so that a change in machine load falls on both."""

    def run(precision: str) -> float:
        settings = predictor.settings(precision=precision)
        start = time.perf_counter()
        for first in range(0, len(frames), batch):
            predictor.predict_frames(frames[first : first + batch], settings)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for repeat in range(repeats + 1):
        for precision in times:
            seconds = run(precision)
            if repeat:  # the first pass of each warms up
                times[precision].append(seconds)
    return {precision: len(frames) / statistics.median(values) for precision, values in times.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks bf16_predict", description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="*", help="detection .safetensors files")
    parser.add_argument(
        "--data", nargs="*", default=[], help="the COCO folder the weights were trained on: one, or one per weights"
    )
    parser.add_argument("--images", type=int, default=64, help="validation images timed per pass")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--conf", type=float, default=0.3, help="detections compared box by box score at least this")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if not args.weights or not args.data:
        # ``python -m benchmarks all`` runs every benchmark without arguments; this one needs trained weights
        print("bf16_predict needs trained detection weights and --data (see python -m benchmarks bf16_predict -h)")
        return
    if len(args.data) not in (1, len(args.weights)):
        parser.error(f"--data takes one folder or one per weights file ({len(args.weights)}), got {len(args.data)}")
    folders = args.data * len(args.weights) if len(args.data) == 1 else args.data

    results, summary = Results("bf16_predict", args), []
    print(f"CPU bfloat16 instructions: {bf16_instructions()}")
    for weights, data in zip(args.weights, folders, strict=True):
        predictor = load_for(get_task("detect"), weights, "cpu")
        images_dir = Path(data) / "images"
        names = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        frames = [Frame(np.array(Image.open(p).convert("RGB")), str(p)) for p in names[: args.images]]
        print(f"\n{predictor.name} ({weights}): {len(frames)} images, batch {args.batch}, median of {args.repeats}")
        accuracy: dict[str, object] = {}
        for threads in args.threads:
            with results.at(threads, model=predictor.name, weights=weights, data=data) as entry:
                speed = images_per_second(predictor, frames, args.batch, args.repeats)
                print(
                    f"  images/s: fp32 {speed['fp32']:.1f}, bf16 {speed['bf16']:.1f}, "
                    f"bf16 / fp32 {speed['bf16'] / speed['fp32']:.2f}x"
                )
                summary.append((predictor.name, threads, 1e3 / speed["bf16"], 1e3 / speed["fp32"]))
                entry["images_per_s"] = {p: round(v, 2) for p, v in speed.items()}
                entry["speedup"] = ratio(speed["bf16"], speed["fp32"])
                if not accuracy:
                    metrics = {p: evaluate(weights, data, args.batch, p) for p in ("fp32", "bf16")}
                    accuracy = {
                        "AP_fp32": metrics["fp32"]["AP"],
                        "AP_bf16": metrics["bf16"]["AP"],
                        "AP_difference": metrics["bf16"]["AP"] - metrics["fp32"]["AP"],
                        "AP50_difference": metrics["bf16"]["AP50"] - metrics["fp32"]["AP50"],
                        **detection_differences(predictor, frames, args.conf),
                    }
                    print(
                        f"  AP fp32 {accuracy['AP_fp32']:.4f}, bf16 {accuracy['AP_bf16']:.4f} "
                        f"(difference {accuracy['AP_difference']:+.4f}); detections scoring >= {args.conf}: "
                        f"{accuracy['detections']}, {accuracy['unmatched']} without a bf16 match, largest box "
                        f"difference {accuracy['max_box_difference_px']:.2f} px, score "
                        f"{accuracy['max_score_difference']:.4f}"
                    )
                    entry["accuracy"] = accuracy
    # ms per image, so that the printed ratio is fp32 time / bf16 time: the speed-up
    print_ratio_summary("bf16 predict, ms per image (ours: bf16, peer: fp32)", summary)
    results.write()
