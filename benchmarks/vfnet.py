"""VarifocalNet: the paper's loss ablation on synthetic shapes, and head + postprocess latency.

``ablation``: vfnet_r18_tiny trained with the varifocal loss (IoU targets) and with the focal
loss (one-hot targets), otherwise identical (data, seed, steps, batch, schedule), through the
engine as ``sightkit train detect`` does; optionally detr_r18_tiny with the same budget.
Prints COCO AP / AP50 on the validation split and the training step time.

``latency``: the dense head and its postprocess on the same pyramid features, ours
(:class:`VFNetHead` + :func:`vfnet_postprocess`) against the closest dense head of a peer,
ultralytics' YOLOv8 ``Detect`` (anchor-free, decoupled, per location box + class, DFL box
decoding) + ``non_max_suppression`` at the same score and IoU thresholds. transformers has no
dense convolutional detection head (its detectors are DETR-style set predictors). The heads
differ in design (VFNet: 5 levels, GroupNorm towers, two deformable convolutions and a
refinement branch; YOLOv8: 3 levels, BN conv towers with depthwise classification convs), so
the ratio is a cost comparison of two designs at equal width, not of two implementations of
one design: parameter counts and FLOP-relevant sizes are printed with it.

    python -m benchmarks vfnet ablation --steps 1000 --threads 1
    python -m benchmarks vfnet latency [--threads 1 2]

``latency`` runs at each ``--threads`` count (default 1 and 2), ``ablation`` at the first;
the figures go to ``benchmarks/results/vfnet.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary
from benchmarks._timing import median_time
from sightkit.data.synthetic.shapes import ShapesConfig, synthesize_shapes
from sightkit.engine.trainer import Trainer
from sightkit.models import create_model
from sightkit.models.vfnet import VFNetHead, final_boxes, vfnet_postprocess
from sightkit.ops import box_convert
from sightkit.tasks.detect import (
    CocoEvaluate,
    DetectConfig,
    build_datasets,
    collate_for,
    weights_metadata,
)

# name -> (registry model, builder overrides)
VARIANTS = {
    "vfnet varifocal": ("vfnet_r18_tiny", {"cls_loss": "varifocal"}),
    "vfnet focal": ("vfnet_r18_tiny", {"cls_loss": "focal"}),
    "detr": ("detr_r18_tiny", {}),
}


def train_variant(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Train one variant as ``sightkit train detect`` would, with builder overrides; returns AP and timing."""
    model_name, overrides = VARIANTS[name]
    out = Path(args.out) / name.replace(" ", "_")
    detr = model_name.startswith("detr")
    config = DetectConfig(
        model=model_name,
        data=args.data,
        out=str(out),
        epochs=0,
        steps=args.steps,
        batch=args.batch,
        lr=args.detr_lr if detr else args.lr,
        imgsz=args.imgsz,
        max_size=args.imgsz + args.imgsz // 4,
        warmup_steps=min(100, args.steps // 10),
        # DETR keeps its recipe (backbone lr x0.1, clipping at 0.1); the dense detector trains
        # its from-scratch backbone at the full rate, as mmdetection's VFNet recipe does.
        backbone_lr_mult=0.1 if detr else 1.0,
        clip_grad_norm=0.1 if detr else 0.0,
        eval_every=args.steps,
        log_every=50,
        seed=args.seed,
        exist_ok=True,
        plot=False,
    )
    train_set, val_set = build_datasets(config)
    model = create_model(model_name, num_classes=len(train_set.categories), **overrides)
    criterion = model.build_criterion(**({"eos_coef": config.eos_coef} if model.no_object_class else {}))
    assert val_set is not None  # the benchmark data has a val split
    trainer = Trainer(
        model,
        criterion,
        train_set,
        config,
        loss_weights=criterion.weight_dict,
        val_data=val_set,
        collate_fn=collate_for(model),
        evaluate=CocoEvaluate(val_set.annotation_file, val_set.category_map.category_ids, config.top_k),
        weights_metadata=weights_metadata(config, train_set),
    )
    start = time.perf_counter()
    metrics = trainer.fit()
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_times = [1 / r["it_s"] for r in records if r["kind"] == "train" and r.get("it_s")]
    return {
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "ms_per_step": 1e3 * statistics.median(step_times),
        "minutes": seconds / 60,
    }


def ablation(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Train the variants at the first of ``--threads`` (training runs are too long to repeat)."""
    torch.set_num_threads(args.threads[0])
    data = Path(args.data)
    if not (data / "annotations" / "train.json").is_file():
        synthesize_shapes(ShapesConfig(out=str(data), images=600, seed=0, size=args.imgsz))
    results = {name: train_variant(name, args) for name in args.variants}
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    print(
        f"\nsynthetic shapes ({args.data}), {args.steps} steps, batch {args.batch}, imgsz {args.imgsz}, "
        f"{args.threads[0]} thread(s), seed {args.seed}"
    )
    print(f"{'variant':<18} {'AP':>6} {'AP50':>6} {'ms/step':>8} {'minutes':>8}")
    for name, r in results.items():
        print(f"{name:<18} {r['AP']:>6.3f} {r['AP50']:>6.3f} {r['ms_per_step']:>8.0f} {r['minutes']:>8.1f}")
    if {"vfnet varifocal", "vfnet focal"} <= set(results):
        varifocal, focal = results["vfnet varifocal"], results["vfnet focal"]
        gain, gain50 = varifocal["AP"] - focal["AP"], varifocal["AP50"] - focal["AP50"]
        ratio = varifocal["ms_per_step"] / focal["ms_per_step"]
        print(f"varifocal - focal: AP {gain:+.3f}, AP50 {gain50:+.3f}; step time ratio {ratio:.2f}")
    return results


def time_heads(channels: int, side: int, batch: int, num_classes: int, repeats: int) -> dict[str, tuple[float, int]]:
    """Median seconds and parameter count of each head + postprocess on the same random pyramid
    features: ours, ours without the star-shaped deformable convolutions and refinement (the
    paper's ablation), and YOLOv8's."""
    from ultralytics.nn.modules.head import Detect
    from ultralytics.utils.nms import non_max_suppression

    strides = (8, 16, 32, 64, 128)
    features = [torch.randn(batch, channels, -(-side // s), -(-side // s)) for s in strides]
    tiny = channels == 64  # vfnet_r18_tiny's head; otherwise the paper's
    settings = {"stacked_convs": 2 if tiny else 3, "gn_groups": 16 if tiny else 32}
    head = VFNetHead(num_classes, channels, channels, **settings).eval()
    plain = VFNetHead(num_classes, channels, channels, refine=False, **settings).eval()
    yolo = Detect(nc=num_classes, ch=(channels,) * 3).eval()
    yolo.stride = torch.tensor([8.0, 16.0, 32.0])  # YOLOv8 predicts on P3-P5 only
    sizes = torch.tensor([[side, side]] * batch)

    def ours(module: VFNetHead) -> Callable[[], None]:
        @torch.no_grad()
        def run() -> None:
            outputs = module(features)
            boxes = box_convert(final_boxes(outputs) / side, "xyxy", "cxcywh")
            vfnet_postprocess(outputs["pred_logits"], boxes, sizes, score_threshold=0.05, iou_threshold=0.6)

        return run

    @torch.no_grad()
    def theirs() -> None:
        prediction = yolo(list(features[:3]))
        prediction = prediction[0] if isinstance(prediction, tuple) else prediction
        non_max_suppression(prediction, conf_thres=0.05, iou_thres=0.6, max_det=100)

    return {
        name: (median_time(fn, repeats=repeats), sum(p.numel() for p in module.parameters()))
        for name, fn, module in (("vfnet", ours(head), head), ("no star", ours(plain), plain), ("yolov8", theirs, yolo))
    }


def latency(args: argparse.Namespace, threads: int) -> dict[str, dict[str, float]]:
    """Print the latency table at ``threads`` and return its rows (ms and parameters by setting and head)."""
    torch.manual_seed(0)
    print(f"head + postprocess latency, {threads} thread(s); score threshold 0.05, NMS IoU 0.6, 100 detections")
    print(f"{'setting':<30} {'head':<8} {'ms':>9} {'/ yolov8':>9} {'params':>8}")
    rows = {}
    for channels, side, batch, num_classes in ((64, 128, 8, 5), (256, 640, 1, 80)):
        results = time_heads(channels, side, batch, num_classes, args.repeats)
        setting = f"{channels} ch, {side}px, batch {batch}, C={num_classes}"
        for name, (seconds, params) in results.items():
            ratio = seconds / results["yolov8"][0]
            print(f"{setting:<30} {name:<8} {seconds * 1e3:>9.1f} {ratio:>9.2f} {params / 1e6:>7.2f}M")
        rows[setting] = {
            name: {"ms": round(seconds * 1e3, 2), "parameters": params} for name, (seconds, params) in results.items()
        }
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", choices=["ablation", "latency", "all"], default="all")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["vfnet varifocal", "vfnet focal"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the VFNet variants")
    parser.add_argument("--detr-lr", type=float, default=2e-4, help="AdamW learning rate of DETR")
    parser.add_argument("--imgsz", type=int, default=128)
    add_threads_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--data", default="runs/data/shapes_bench")
    parser.add_argument("--out", default="runs/bench/vfnet")
    args = parser.parse_args(argv)
    results, summary = Results("vfnet", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            if args.part in ("latency", "all"):
                entry["latency"] = latency(args, threads)
                for setting, heads in entry["latency"].items():
                    summary.append((f"{setting}", threads, heads["vfnet"]["ms"], heads["yolov8"]["ms"]))
            if args.part in ("ablation", "all") and threads == args.threads[0]:
                entry["ablation"] = ablation(args)
    if summary:
        print_ratio_summary("VFNet head + postprocess against YOLOv8's (peer)", summary)
    results.write()
