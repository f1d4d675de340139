"""RLE vs plain L1 regression vs heatmaps at the same training budget, on synthetic people.

``python -m benchmarks pose [--images 120] [--steps 300] [--batch 16] [--input 64 48] [--threads 2]``

The RLE paper's claim to check (Li et al., ICCV 2021, Table 1 and Fig. 1): on the same
network, training with the RLE loss beats plain L1 regression by a wide margin, and comes
close to a heatmap model at a fraction of its cost. Here the three tiny models share one
backbone (ResNet-18 cut after layer3, trained from scratch) and one recipe (AdamW, the same
learning rate, steps, batch and augmentation); they differ only in the head and the loss:

- ``rle_r18_tiny``: pooled features -> (mu, sigma), RLE loss;
- ``regress_r18_tiny``: pooled features -> mu, L1 loss;
- ``heatmap_r18_tiny``: three upsampling stages to heatmaps at stride 2, MSE loss.

Printed per model: COCO keypoint AP / AP50 and box-normalised PCK@0.05 on the held-out
people (ground-truth boxes, flip test), the training step time (forward + backward +
update, measured on one fixed batch), inference latency for one crop and per crop in a
batch of 32, the peak of live tensor memory in a training step (torch.profiler allocation
events) and the parameters and FLOPs of one crop (``torch.utils.flop_counter``). The same
cost figures are printed for the ResNet-50 models at the papers' 256x192 crops, where the
heatmap head's share of the cost is larger than in the tiny models.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from sightkit.data.synthetic.people import synthesize_people
from sightkit.data.topdown import TopDownKeypoints
from sightkit.models import create_model
from sightkit.tasks.pose import PoseConfig, PoseCriterion, train

MODELS = ("rle_r18_tiny", "regress_r18_tiny", "heatmap_r18_tiny")
PAPER_MODELS = ("rle_r50", "regress_r50", "heatmap_r50")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def profiler_peak_mib(fn: Callable[[], object]) -> float:
    """Peak of live tensor memory while ``fn`` runs, replayed from the profiler's allocation events."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: list[tuple[int, int]] = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        pending.extend(node.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak / 2**20


def costs(name: str, input_size: tuple[int, int], batch: int, repeats: int) -> dict[str, float]:
    """Step time, latency, peak memory, parameters and FLOPs of ``name`` at ``input_size``."""
    torch.manual_seed(0)
    model = create_model(name)
    height, width = input_size
    crops = torch.randn(batch, 3, height, width)
    keypoints = torch.rand(batch, 17, 3) * torch.tensor([width, height, 1.0])
    keypoints[..., 2] = 2
    criterion = PoseCriterion(model, input_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        losses = criterion(model(crops), {"keypoints": keypoints})
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step_ms = median_ms(train_step, repeats)
    memory = profiler_peak_mib(train_step)
    model.eval()
    with torch.no_grad():
        one = crops[:1]
        latency = median_ms(lambda: model(one), repeats * 3)
        many = torch.randn(32, 3, height, width)
        per_crop = median_ms(lambda: model(many), repeats) / 32
        with FlopCounterMode(display=False) as counter:
            model(one)
    return {
        "step_ms": step_ms,
        "latency_ms": latency,
        "per_crop_ms": per_crop,
        "peak_mib": memory,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": counter.get_total_flops() / 1e9,
    }


def print_costs(title: str, rows: dict[str, dict[str, float]], batch: int) -> None:
    print(f"\n{title}")
    print(
        f"{'model':<18} {'params M':>8} {'GFLOPs':>7} {f'step ms (b{batch})':>15} {'latency ms':>10} "
        f"{'ms/crop @32':>11} {'peak MiB':>9}"
    )
    for name, row in rows.items():
        print(
            f"{name:<18} {row['params_m']:>8.2f} {row['gflops']:>7.3f} {row['step_ms']:>15.1f} "
            f"{row['latency_ms']:>10.2f} {row['per_crop_ms']:>11.2f} {row['peak_mib']:>9.1f}"
        )
    base = rows[next(n for n in rows if n.startswith("heatmap"))]
    for name, row in rows.items():
        if not name.startswith("heatmap"):
            print(
                f"  {name}: heatmap / this = {base['gflops'] / row['gflops']:.2f}x FLOPs, "
                f"{base['step_ms'] / row['step_ms']:.2f}x step time, {base['latency_ms'] / row['latency_ms']:.2f}x "
                f"latency, {base['peak_mib'] / row['peak_mib']:.2f}x training memory"
            )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks pose", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="synthetic images (a quarter held out)")
    parser.add_argument("--size", type=int, default=128, help="image side of the synthetic people")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per model (the budget)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--input", type=int, nargs=2, default=(64, 48), metavar=("H", "W"), help="crop size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="runs/bench_pose", help="folder for the data and the runs")
    parser.add_argument("--skip-paper", action="store_true", help="leave out the ResNet-50 cost table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = out / "data"
    if not (data / "annotations" / "val.json").is_file():
        synthesize_people(out=str(data), images=args.images, size=args.size, val_fraction=0.25, progress=False)
    input_size = (args.input[0], args.input[1])
    people = {
        split: len(TopDownKeypoints(data / "images", data / "annotations" / f"{split}.json", input_size))
        for split in ("train", "val")
    }
    print(
        f"synthetic people: {people['train']} to train on, {people['val']} held out; crops {input_size[0]}x"
        f"{input_size[1]}; {args.steps} steps of {args.batch}, lr {args.lr}; {args.threads} thread(s), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    accuracy = {}
    for name in MODELS:
        run = out / name
        shutil.rmtree(run, ignore_errors=True)
        config = PoseConfig(
            model=name, data=str(data), out=str(run), input_size=input_size, epochs=0, steps=args.steps,
            batch=args.batch, lr=args.lr, warmup_steps=min(50, args.steps // 10), eval_every=args.steps,
            progress=False, plot=False,
        )  # fmt: skip
        start = time.perf_counter()
        metrics = train(config)
        accuracy[name] = {**metrics, "train_s": time.perf_counter() - start}
    print(f"\naccuracy after {args.steps} steps (held-out people, ground-truth boxes, flip test)")
    print(f"{'model':<18} {'AP':>6} {'AP50':>6} {'AP75':>6} {'PCK@.05':>8} {'EPE px':>7} {'train s':>8}")
    for name, row in accuracy.items():
        print(
            f"{name:<18} {row['AP']:>6.3f} {row['AP50']:>6.3f} {row['AP75']:>6.3f} {row['PCK']:>8.3f} "
            f"{row['EPE']:>7.2f} {row['train_s']:>8.0f}"
        )
    print_costs(
        f"cost at {input_size[0]}x{input_size[1]} crops (CPU, {args.threads} thread(s))",
        {name: costs(name, input_size, args.batch, args.repeats) for name in MODELS},
        args.batch,
    )
    if not args.skip_paper:
        print_costs(
            f"cost of the ResNet-50 models at 256x192 (CPU, {args.threads} thread(s), batch 4)",
            {name: costs(name, (256, 192), 4, max(2, args.repeats // 2)) for name in PAPER_MODELS},
            4,
        )
    (out / "results.json").write_text(json.dumps(accuracy, indent=2))
    print(f"\nmetrics of the runs in {out}/<model>/metrics.jsonl; accuracy in {out / 'results.json'}")
