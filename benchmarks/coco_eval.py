"""sightkit's CocoEvaluator (faster-coco-eval) against pycocotools, on one synthetic detection set.

Both get the same ground truth and the same detections. sightkit's time includes turning the
prediction tensors into COCO records (``update``); pycocotools gets the records ready-made, so
the ratio understates sightkit's advantage a little. The 12 summary numbers must agree.

    python -m benchmarks coco_eval [--images 500] [--categories 20] [--gt-per-image 8]
                                   [--dets-per-image 12] [--repeats 3] [--seed 0] [--threads 1 2]

At each ``--threads`` count of torch intra-op threads (default 1 and 2; both evaluators are
single-threaded C++/Python, so the count mostly shows the load); figures in
``benchmarks/results/coco_eval.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio
from benchmarks._timing import median_time
from sightkit.eval import CocoEvaluator


def make_case(
    images: int, categories: int, gt_per_image: int, dets_per_image: int, seed: int
) -> tuple[dict, dict[int, dict[str, torch.Tensor]], list[dict]]:
    """Ground truth with boxes of all sizes, and detections: jittered copies of most GT boxes
    (sometimes with the wrong label) plus random false positives, with random scores."""
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": str(c)} for c in range(categories)]}
    predictions, records = {}, []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        n = int(rng.integers(1, 2 * gt_per_image))
        wh = rng.choice([12.0, 40.0, 150.0], size=(n, 1)) * rng.uniform(0.6, 1.6, size=(n, 2))
        xy = rng.uniform(0, 1, size=(n, 2)) * (np.array([640, 480]) - wh)
        labels = rng.integers(0, categories, n)
        for box, label in zip(np.concatenate([xy, wh], 1).tolist(), labels.tolist(), strict=True):
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        found = rng.random(n) < 0.8
        jitter = rng.normal(0, 0.1, size=(n, 4)) * np.concatenate([wh, wh], 1)
        true_xyxy = np.concatenate([xy, xy + wh], 1) + jitter
        false = max(dets_per_image - int(found.sum()), 0)
        false_xy = rng.uniform(0, 500, size=(false, 2))
        false_xyxy = np.concatenate([false_xy, false_xy + rng.uniform(8, 140, size=(false, 2))], 1)
        xyxy = np.concatenate([true_xyxy[found], false_xyxy]).astype(np.float32)
        det_labels = np.concatenate(
            [
                np.where(rng.random(n) < 0.9, labels, rng.integers(0, categories, n))[found],
                rng.integers(0, categories, false),
            ]
        )
        scores = rng.random(len(xyxy)).astype(np.float32)
        predictions[image_id] = {
            "boxes": torch.from_numpy(xyxy),
            "scores": torch.from_numpy(scores),
            "labels": torch.from_numpy(det_labels),
        }
        for (x1, y1, x2, y2), score, label in zip(xyxy.tolist(), scores.tolist(), det_labels.tolist(), strict=True):
            records.append(
                {"image_id": image_id, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            )
    return gt, predictions, records


def run_sightkit(gt: dict, predictions: dict[int, dict[str, torch.Tensor]]) -> list[float]:
    evaluator = CocoEvaluator(gt)
    evaluator.update(predictions)
    return list(evaluator.compute().values())


def run_pycocotools(gt: dict, records: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {key: [dict(v) for v in values] for key, values in gt.items()}
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in records]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats.tolist()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks coco_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--gt-per-image", type=int, default=8)
    parser.add_argument("--dets-per-image", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    add_threads_argument(parser)
    args = parser.parse_args(argv)

    gt, predictions, records = make_case(
        args.images, args.categories, args.gt_per_image, args.dets_per_image, args.seed
    )
    print(
        f"{args.images} images, {len(gt['annotations'])} GT boxes, {len(records)} detections, "
        f"{args.categories} categories; median of {args.repeats} runs"
    )
    ours = run_sightkit(gt, predictions)
    reference = run_pycocotools(gt, records)
    results, summary = Results("coco_eval", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            t_ours = median_time(lambda: run_sightkit(gt, predictions), repeats=args.repeats, warmup=0)
            t_ref = median_time(lambda: run_pycocotools(gt, records), repeats=args.repeats, warmup=0)
            print(f"sightkit CocoEvaluator (faster-coco-eval): {t_ours * 1e3:9.1f} ms")
            print(f"pycocotools COCOeval:                      {t_ref * 1e3:9.1f} ms")
            print(f"speed-up: {t_ref / t_ours:.2f}x")
            summary.append(("CocoEvaluator vs pycocotools", threads, t_ours * 1e3, t_ref * 1e3))
            entry.update(
                {"ours_ms": round(t_ours * 1e3, 1), "peer_ms": round(t_ref * 1e3, 1), "ratio": ratio(t_ref, t_ours)}
            )
    difference = float(np.abs(np.subtract(ours, reference)).max())
    print(f"AP {ours[0]:.4f} (pycocotools {reference[0]:.4f}); max |difference| over the 12 numbers: {difference:.2e}")
    results.data["agreement"] = {"AP": ours[0], "AP_pycocotools": reference[0], "max_difference": difference}
    print_ratio_summary("COCO evaluation", summary)
    results.write()
