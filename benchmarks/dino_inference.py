"""DINO-R50 inference at a real image size: the network's forward in float32 with the
deformable attention on its CPU inference path (one weighted gather) and on the
``grid_sample`` path that training uses, and at bfloat16 (the predictors' prepared copy).

``python -m benchmarks dino_inference [--height 800] [--width 1216] [--batch 1] [--repeats 3]
[--threads 1 2]``

``dino_r50`` (DINO-4scale: ResNet-50, 6 + 6 layers, 900 queries, 91 classes) with random
weights (speed only; nothing is downloaded), on one random ``[B, 3, H, W]`` batch without
padding, under ``torch.inference_mode``. The three variants alternate call by call; the median
over ``--repeats`` calls after a warm-up, at each ``--threads`` count. The peer here is our own
``grid_sample`` path, which transformers' PyTorch Deformable DETR attention also uses (see
``deformable_attention`` for the kernel against theirs). Figures in
``benchmarks/results/dino_inference.json``.
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio
from benchmarks._timing import alternate
from sightkit.engine.precision import autocast_context, prepare_for_inference
from sightkit.models import create_model
from sightkit.nn import deformable_attention


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks dino_inference", description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = create_model("dino_r50", num_classes=91).eval()
    prepared = prepare_for_inference(model, "bf16")
    images = torch.randn(args.batch, 3, args.height, args.width)

    def gather() -> object:
        return model(images)

    def grid_sample() -> object:
        with mock.patch.object(deformable_attention, "_weighted_gather_applies", return_value=False):
            return model(images)

    def bf16() -> object:
        with autocast_context("bf16", "cpu"):
            return prepared(images)

    results, summary = Results("dino_inference", args), []
    for threads in args.threads:
        with results.at(threads) as entry, torch.inference_mode():
            times = alternate({"fp32 gather": gather, "fp32 grid_sample": grid_sample, "bf16": bf16}, args.repeats)
            for name, seconds in times.items():
                print(f"  {name:<18} {seconds * 1e3:9.0f} ms")
                entry[name] = {
                    "ms": round(seconds * 1e3, 1),
                    "speedup_vs_fp32_grid_sample": ratio(times["fp32 grid_sample"], seconds),
                    "speedup_vs_fp32_gather": ratio(times["fp32 gather"], seconds),
                }
            summary.append(
                ("fp32, gather vs grid_sample", threads, times["fp32 gather"] * 1e3, times["fp32 grid_sample"] * 1e3)
            )
            summary.append(("bf16 vs fp32 (gather)", threads, times["bf16"] * 1e3, times["fp32 gather"] * 1e3))
    print_ratio_summary("DINO-R50 forward, ms per batch", summary)
    results.write()
