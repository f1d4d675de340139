"""Soft-NMS: sightkit's ``soft_nms`` against the textbook one-box-at-a-time algorithm, and
``nms`` / ``diou_nms`` against ``torchvision.ops.nms``.

``python -m benchmarks soft_nms [--boxes 5000] [--min-side 10] [--max-side 100] [--repeats 7] [--threads 1 2]``

Inputs: ``--boxes`` random boxes in a 1000 x 1000 image, sides uniform in
[``--min-side``, ``--max-side``] pixels, uniform scores; float32 on the CPU. With the defaults
a box overlaps about 24 others, so the gaussian decay (which acts on every overlap) has a
dense graph to work through, and the linear one (IoU > 0.3 only) a sparse one.

Peer for Soft-NMS: the algorithm of the paper's code (Bodla et al., ``cpu_soft_nms``): take
the box with the highest score, decay every remaining box by its IoU with it, drop those
below the threshold, repeat. Its inner loop over the remaining boxes is written in NumPy here
(in pure Python it would be a few hundred times slower, which is not a fair peer), so the
peer is one NumPy pass over the remaining boxes per selected box. Agreement: both must select
the same indices in the same order, and the rescored scores must match to float32 rounding.

Time: the median over ``--repeats`` runs after one warm-up, as wall time and as process CPU
time (steadier on a shared machine), at each of the ``--threads`` counts of torch intra-op
threads (default 1 and 2; the NumPy peer runs on one core either way). The figures go to
``benchmarks/results/soft_nms.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio
from sightkit.ops import diou_nms, nms, soft_nms


def reference_soft_nms(
    boxes: np.ndarray, scores: np.ndarray, sigma: float, score_threshold: float, method: str, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Soft-NMS as in the paper's code, one selected box per step, in NumPy float32.

    The remaining boxes stay in index order, so ``argmax`` breaks ties by the lower index.
    """
    boxes, scores = boxes.astype(np.float32), scores.astype(np.float32).copy()
    keep = scores >= score_threshold
    boxes, scores, indices = boxes[keep], scores[keep], np.flatnonzero(keep)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept, kept_scores = [], []
    while scores.size:
        best = int(np.argmax(scores))
        kept.append(indices[best])
        kept_scores.append(scores[best])
        width = np.clip(np.minimum(boxes[best, 2], boxes[:, 2]) - np.maximum(boxes[best, 0], boxes[:, 0]), 0, None)
        height = np.clip(np.minimum(boxes[best, 3], boxes[:, 3]) - np.maximum(boxes[best, 1], boxes[:, 1]), 0, None)
        inter = width * height
        iou = inter / (areas[best] + areas - inter)
        if method == "gaussian":
            scores = scores * np.exp(-(iou * iou) / sigma)
        else:
            scores = scores * np.where(iou > iou_threshold, 1 - iou, 1).astype(np.float32)
        keep = scores >= score_threshold
        keep[best] = False
        boxes, scores, indices, areas = boxes[keep], scores[keep], indices[keep], areas[keep]
    return np.asarray(kept, dtype=np.int64), np.asarray(kept_scores, dtype=np.float32)


def random_boxes(n: int, min_side: float, max_side: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    wh = min_side + torch.rand(n, 2, generator=g) * (max_side - min_side)
    return torch.cat((xy, xy + wh), 1), torch.rand(n, generator=g)


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and process CPU seconds of ``fn()`` over ``repeats`` runs after a warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _agreement(ours: tuple[torch.Tensor, torch.Tensor], peer: tuple[np.ndarray, np.ndarray]) -> str:
    """Same boxes kept, each with the same rescored score, in the same order; two boxes whose
    scores differ by float32 rounding (products of decays taken in another order) may swap."""
    indices, rescored = ours[0].numpy(), ours[1].numpy()
    ref_indices, ref_scores = peer
    if not np.array_equal(np.sort(indices), np.sort(ref_indices)):
        return f"DIFFERENT boxes kept: {len(indices)} vs {len(ref_indices)}"
    ref_score_of = dict(zip(ref_indices.tolist(), ref_scores.tolist(), strict=True))
    ref_in_our_order = np.array([ref_score_of[i] for i in indices.tolist()], dtype=np.float32)
    worst = float(np.abs(rescored - ref_in_our_order).max()) if indices.size else 0.0
    moved = int((indices != ref_indices).sum())
    # Our order must also be the peer's order wherever the peer's scores differ by more than rounding.
    consistent = bool(np.all(np.diff(ref_in_our_order) <= 1e-6))
    return (
        f"same {len(indices)} boxes, max |score diff| {worst:.1e}, order: {moved} moved, near-ties only: {consistent}"
    )


def _row(name: str, ours: tuple[float, float], peer: tuple[float, float], agreement: str) -> str:
    return (
        f"{name:<22} {ours[0] * 1e3:9.1f} {peer[0] * 1e3:10.1f} {peer[0] / ours[0]:7.1f}x"
        f" {ours[1] * 1e3:9.1f} {peer[1] * 1e3:10.1f} {peer[1] / ours[1]:7.1f}x  {agreement}"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks soft_nms", description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=5000)
    parser.add_argument("--min-side", type=float, default=10.0)
    parser.add_argument("--max-side", type=float, default=100.0)
    parser.add_argument("--repeats", type=int, default=7)
    add_threads_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    boxes, scores = random_boxes(args.boxes, args.min_side, args.max_side, args.seed)
    print(
        f"{args.boxes} boxes, sides in [{args.min_side:g}, {args.max_side:g}] px in 1000 x 1000, "
        f"float32, median of {args.repeats}"
    )
    np_boxes, np_scores = boxes.numpy(), scores.numpy()
    results, summary = Results("soft_nms", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            print(f"{'':<22} {'ours ms':>9} {'peer ms':>10} {'ratio':>8} {'ours cpu':>9} {'peer cpu':>10} {'ratio':>8}")
            rows = {}
            for method in ("gaussian", "linear"):
                kwargs = {"sigma": 0.5, "score_threshold": 0.001, "method": method, "iou_threshold": 0.3}
                agreement = _agreement(
                    soft_nms(boxes, scores, **kwargs), reference_soft_nms(np_boxes, np_scores, **kwargs)
                )
                ours = measure(lambda kwargs=kwargs: soft_nms(boxes, scores, **kwargs), args.repeats)
                peer = measure(lambda kwargs=kwargs: reference_soft_nms(np_boxes, np_scores, **kwargs), args.repeats)
                rows[f"soft_nms {method}"] = (ours, peer, agreement)

            expected = torchvision.ops.nms(boxes, scores, 0.5)
            peer = measure(lambda: torchvision.ops.nms(boxes, scores, 0.5), args.repeats)
            ours = measure(lambda: nms(boxes, scores, 0.5), args.repeats)
            rows["nms"] = (ours, peer, f"same indices: {torch.equal(nms(boxes, scores, 0.5), expected)}")
            ours = measure(lambda: diou_nms(boxes, scores, 0.5), args.repeats)
            kept = f"keeps {len(diou_nms(boxes, scores, 0.5))} (nms {len(expected)})"
            rows["diou_nms (vs tv nms)"] = (ours, peer, kept)
            for name, (ours, peer, agreement) in rows.items():
                if name == "nms":
                    print("reference: greedy NMS at IoU 0.5 against torchvision.ops.nms (C++)")
                print(_row(name, ours, peer, agreement))
                summary.append((name, threads, ours[0] * 1e3, peer[0] * 1e3))
                entry[name] = {
                    "ours_ms": round(ours[0] * 1e3, 3),
                    "peer_ms": round(peer[0] * 1e3, 3),
                    "ours_cpu_ms": round(ours[1] * 1e3, 3),
                    "peer_cpu_ms": round(peer[1] * 1e3, 3),
                    "ratio": ratio(peer[0], ours[0]),
                    "agreement": agreement,
                }
    print_ratio_summary("Soft-NMS and NMS, wall time", sorted(summary, key=lambda row: row[0]))
    results.write()
