"""Convergence on synthetic shapes: COCO box AP of detection models after fixed step budgets.

Trains each model with the same data, batch, image size and schedule through
``sightkit.tasks.detect.train`` and evaluates on the validation split every ``--eval-every``
steps, then prints AP and AP50 at each budget, the step time, and AP ratios against the
first model. This is the baseline table that faster-converging detectors are held to.

    python -m benchmarks detect_convergence --models detr_r18_tiny --steps 5000 --eval-every 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sightkit.data.synthetic.shapes import ShapesConfig, synthesize_shapes
from sightkit.tasks.detect import DetectConfig, train


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["detr_r18_tiny"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--data", default="runs/data/shapes_bench")
    parser.add_argument("--out", default="runs/bench/detect_convergence")
    args = parser.parse_args(argv)

    data = Path(args.data)
    if not (data / "annotations" / "train.json").is_file():
        synthesize_shapes(ShapesConfig(out=str(data), images=args.images, seed=0, size=args.imgsz))
    results: dict[str, dict] = {}
    for name in args.models:
        out = Path(args.out) / name
        start = time.perf_counter()
        train(
            DetectConfig(
                model=name,
                data=str(data),
                out=str(out),
                epochs=0,
                steps=args.steps,
                batch=args.batch,
                lr=args.lr,
                imgsz=args.imgsz,
                max_size=args.imgsz + args.imgsz // 4,
                warmup_steps=min(100, args.steps // 10),
                eval_every=args.eval_every,
                log_every=50,
                exist_ok=True,
            )
        )
        seconds = time.perf_counter() - start
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        results[name] = {
            "ap": {r["step"]: (r["AP"], r["AP50"]) for r in records if r["kind"] == "val"},
            "seconds_per_step": seconds / args.steps,
        }
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    baseline = args.models[0]
    print(f"\nsynthetic shapes, {args.images} images, batch {args.batch}, imgsz {args.imgsz}, lr {args.lr}")
    print(f"{'model':<20} {'step':>6} {'AP':>7} {'AP50':>7} {'AP / ' + baseline:>24}")
    for name, result in results.items():
        for step, (ap, ap50) in sorted(result["ap"].items()):
            base = results[baseline]["ap"].get(step, (float("nan"),))[0]
            ratio = ap / base if base > 0 else float("nan")
            print(f"{name:<20} {step:>6} {ap:>7.3f} {ap50:>7.3f} {ratio:>24.2f}")
        print(f"{name:<20} {result['seconds_per_step'] * 1e3:.0f} ms per step (training and evaluation, wall)")
