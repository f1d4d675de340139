"""IoU-family losses, forward + backward: sightkit (hand-derived backward) against the peer.

``python -m benchmarks iou_loss [--n 1000000] [--repeats 7] [--threads 1] [--no-rss]``

Peers: ``torchvision.ops.generalized_box_iou_loss``, ``distance_box_iou_loss`` and
``complete_box_iou_loss`` with autograd; for the IoU loss, which torchvision lacks, the plain
autograd formula ``1 - inter / (union + eps)``. The inputs are N matched pairs, float32 on
the CPU: targets, and predictions jittered around them (most overlap, some do not); the
predictions require grad, the targets do not, as in training. One step is
``loss(pred, target).sum().backward()``.

Time: the median over ``--repeats`` steps after a warm-up, as wall time and as process CPU
time (the second is steadier on a shared machine). ``--threads`` sets torch's intra-op
threads for both sides (default 1: the same work on one core, not a race for cores).

Peak memory, measured two ways, both on top of what exists before the step (the inputs):

- profiler: ``torch.profiler`` with ``profile_memory=True`` records every tensor allocation
  and free of one step with its size and time; replaying them in time order gives the peak
  of live tensor bytes. It includes the gradient of the predictions ([N, 4]) and the loss.
- rss: each variant runs in a fresh Python process that builds the inputs, runs a small
  warm-up step (libraries, thread pools) and hands freed heap pages back to the system
  (glibc ``malloc_trim``, so that the step cannot hide in pages already resident); then the
  kernel's high-water mark of resident memory is reset to the current size
  (``5 > /proc/self/clear_refs``), one step runs at N,
  and the result is ``VmHWM`` after it minus ``VmRSS`` before it (``/proc/self/status``):
  the peak growth of the process's resident memory, allocator overheads included. (The
  plain ``ru_maxrss`` delta cannot be reset, so earlier peaks would hide the step's; it is
  the fallback where ``clear_refs`` is not writable.)

Agreement: ``max |ours - peer| / max |peer|`` over the N losses and over the N x 4 gradients.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision.ops
from torch import Tensor

from sightkit.losses import box_iou_loss, complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

LossFn = Callable[[Tensor, Tensor], Tensor]


def plain_iou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """The IoU loss as it is usually written, differentiated by autograd: the IoU peer."""
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    return 1 - inter / (area1 + area2 - inter + eps)


LOSSES: dict[str, tuple[LossFn, str, LossFn]] = {
    "iou": (box_iou_loss, "plain autograd", plain_iou_loss),
    "giou": (generalized_box_iou_loss, "torchvision", torchvision.ops.generalized_box_iou_loss),
    "diou": (distance_box_iou_loss, "torchvision", torchvision.ops.distance_box_iou_loss),
    "ciou": (complete_box_iou_loss, "torchvision", torchvision.ops.complete_box_iou_loss),
}


def make_pairs(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` targets in a 1000-pixel image and predictions jittered around them, xyxy float32."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=generator) * 1000
    size = torch.rand(n, 2, generator=generator) * 190 + 10
    target = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    pred_centre = centre + 0.3 * size * torch.randn(n, 2, generator=generator)
    pred_size = size * torch.exp(0.3 * torch.randn(n, 2, generator=generator))
    pred = torch.cat([pred_centre - pred_size / 2, pred_centre + pred_size / 2], dim=1)
    return pred, target


def step(fn: LossFn, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """One forward + backward; returns the losses and the gradient of ``pred``."""
    pred = pred.detach().requires_grad_()
    loss = fn(pred, target)
    loss.sum().backward()
    return loss.detach(), pred.grad


def median_times(fn: LossFn, pred: Tensor, target: Tensor, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of one step."""
    step(fn, pred, target)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step(fn, pred, target)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def profiler_peak_mib(fn: LossFn, pred: Tensor, target: Tensor) -> float:
    """Peak of live tensor memory during one step, from the profiler's allocation events."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    pred = pred.detach().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(pred, target).sum().backward()
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


def rss_peak_mib(name: str, impl: str, n: int, threads: int) -> float:
    """Peak growth of resident memory over one step, measured in a fresh process (see the module notes)."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "benchmarks", "iou_loss", "--child", name, impl, str(n), str(threads)]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _child(name: str, impl: str, n: int, threads: int) -> None:
    torch.set_num_threads(threads)
    ours, _, peer = LOSSES[name]
    fn = ours if impl == "ours" else peer
    step(fn, *make_pairs(1000, seed=1))
    pred, target = make_pairs(n)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = _proc_status_kib("VmRSS")
        step(fn, pred, target)
        grown = _proc_status_kib("VmHWM") - before
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step(fn, pred, target)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(grown / 1024)  # KiB -> MiB


def _ratio(peer: float, ours: float) -> str:
    return f"{peer / ours:.2f}x" if ours > 0 else "n/a"


def _relative(ours: Tensor, peer: Tensor) -> float:
    return ((ours - peer).abs().max() / peer.abs().max()).item()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks iou_loss", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of box pairs")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-process ru_maxrss measurement")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, impl, n, threads = args.child
        _child(name, impl, int(n), int(threads))
        return

    torch.set_num_threads(args.threads)
    pred, target = make_pairs(args.n)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"N={args.n} pairs, float32, CPU, {args.threads} thread(s), median of {args.repeats} steps")
    print(f"{os.cpu_count()} CPUs, load average {load} (wall times stretch under load; CPU times less so)")
    header = f"{'loss':5} {'impl':15} {'wall ms':>8} {'cpu ms':>8} {'peak MiB prof':>14} {'peak MiB rss':>13}"
    print(header)
    for name, (ours, peer_name, peer) in LOSSES.items():
        rows = {}
        for impl, fn in (("ours", ours), ("peer", peer)):
            wall, cpu = median_times(fn, pred, target, args.repeats)
            prof = profiler_peak_mib(fn, pred, target)
            rss = float("nan") if args.no_rss else rss_peak_mib(name, impl, args.n, args.threads)
            rows[impl] = (wall, cpu, prof, rss)
            label = "sightkit" if impl == "ours" else peer_name
            print(f"{name:5} {label:15} {wall * 1e3:8.1f} {cpu * 1e3:8.1f} {prof:14.1f} {rss:13.1f}", flush=True)
        ratios = [_ratio(peer_value, ours_value) for ours_value, peer_value in zip(*rows.values(), strict=True)]
        print(
            f"{name:5} {'peer/ours':15} {ratios[0]:>8} {ratios[1]:>8} {ratios[2]:>14} {ratios[3]:>13}"
            "   (time: how many times faster; memory: how many times less)"
        )
        loss0, grad0 = step(ours, pred, target)
        loss1, grad1 = step(peer, pred, target)
        print(
            f"{name:5} agreement: loss {_relative(loss0, loss1):.1e}, grad {_relative(grad0, grad1):.1e} "
            "(max |ours - peer| / max |peer|)"
        )
