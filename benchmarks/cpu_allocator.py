"""The CPU allocator tuning (``sightkit.engine.tune_cpu_allocator``, which the command line
applies) against glibc's defaults: detection inference, images per second.

``python -m benchmarks cpu_allocator [--models dino_r18_tiny detr_r18_tiny] [--batch 8]
[--batches 8] [--rounds 5] [--threads 1 2]``

The allocator is set once per process, so each measurement is a fresh process: per thread
count and model, ``--rounds`` pairs of processes, one with glibc's defaults (the peer) and one
tuned, in alternating order so that a change in machine load falls on both. Each process runs
the model (random weights: the time does not depend on them) on ``--batches`` batches of
``--batch`` images whose sizes vary as a dataset's do (96 to 128 pixels a side, padded to the
batch's largest, as the predictor does), at float32 and at bfloat16 (the predictor's prepared
copy under autocast), and reports its images/s, the median of 5 passes. The figure is the
median over the rounds, and the ratio tuned / defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary

MODES = ("defaults", "tuned")


def child(mode: str, model_name: str, threads: int, batch: int, batches: int) -> dict[str, float]:
    """Images/s at fp32 and bf16 in this process, the allocator tuned or left at its defaults."""
    from sightkit._allocator import tune_cpu_allocator

    if mode == "tuned" and not tune_cpu_allocator():
        raise SystemExit("tune_cpu_allocator changed nothing here (not glibc, or MALLOC_* set)")
    import torch

    from sightkit.engine.precision import autocast_context, prepare_for_inference
    from sightkit.models import create_model
    from sightkit.predictor import pad_images

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    model = create_model(model_name, num_classes=3).eval()
    inputs = []
    for _ in range(batches):
        sizes = torch.randint(96, 129, (batch, 2), generator=generator).tolist()
        inputs.append(pad_images([torch.randn(3, h, w, generator=generator) for h, w in sizes]))
    speed = {}
    for precision in ("fp32", "bf16"):
        network = prepare_for_inference(model, precision)
        passes = []
        with torch.inference_mode(), autocast_context(precision, "cpu"):
            for _ in range(6):  # the first pass warms up
                start = time.perf_counter()
                for images, mask in inputs:
                    network(images, mask)
                passes.append(time.perf_counter() - start)
        speed[precision] = batch * batches / statistics.median(passes[1:])
    return speed


def measure(mode: str, model_name: str, threads: int, batch: int, batches: int) -> dict[str, float]:
    """:func:`child` in a fresh process, without the user's own allocator settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    for name in ("LD_PRELOAD", "GLIBC_TUNABLES", "SIGHTKIT_ALLOCATOR"):
        env.pop(name, None)
    command = [sys.executable, "-m", "benchmarks", "cpu_allocator", "--child", mode, "--models", model_name]
    command += ["--threads", str(threads), "--batch", str(batch), "--batches", str(batches)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks cpu_allocator", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dino_r18_tiny", "detr_r18_tiny"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="pairs of processes per model and thread count")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.models[0], args.threads[0], args.batch, args.batches)))
        return

    results, summary = Results("cpu_allocator", args), []
    for threads in args.threads:
        for model_name in args.models:
            with results.at(threads, model=model_name) as entry:
                runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
                for round_ in range(args.rounds):
                    for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                        runs[mode].append(measure(mode, model_name, threads, args.batch, args.batches))
                for precision in ("fp32", "bf16"):
                    median = {mode: statistics.median(run[precision] for run in runs[mode]) for mode in MODES}
                    print(
                        f"  {model_name} {precision}: images/s defaults {median['defaults']:.1f}, tuned "
                        f"{median['tuned']:.1f} ({median['tuned'] / median['defaults']:.2f}x); per round "
                        + ", ".join(f"{t[precision] / d[precision]:.2f}x" for d, t in zip(*runs.values(), strict=True))
                    )
                    entry[precision] = {"images_per_s": median, "per_round": runs}
                    # ms per image, so that the printed ratio is defaults' time / tuned time
                    summary.append(
                        (f"{model_name} {precision}", threads, 1e3 / median["tuned"], 1e3 / median["defaults"])
                    )
    print_ratio_summary("allocator, ms per image (ours: tuned, peer: glibc's defaults)", summary)
    results.write()
