"""Partial FC against a full, data-parallel FC classifier on gloo CPU processes: per-rank memory,
step time and communication, and how the per-rank memory scales with the number of ranks.

``python -m benchmarks partial_fc [--classes 100000] [--dim 512] [--batch 64] [--steps 5] [--ranks 1 2 4]``

For each world size W in ``--ranks`` this process starts W worker processes (this file with
``--worker``, gloo, one thread each, RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT as ``torchrun``
sets them). Each rank takes its ``[B, D]`` slice of one seeded global batch of random
embeddings (``requires_grad``, standing in for the backbone's output) with random labels, and
times a training step of the classifier: forward, backward, the optimizer update (SGD,
momentum 0.9, weight decay 5e-4, as insightface's arcface_torch). ArcFace margin, s = 64.
Three configurations, in turn, in the same processes:

1. ``full FC``: what a plain DDP classifier does. The whole ``[C, D]`` weight on every rank,
   cosines ``[B, C]`` of the rank's own batch, :func:`~sightkit.losses.combined_margin_logits`
   and ``F.cross_entropy``, then the ``[C, D]`` weight gradient all-reduced and divided by W.
   Real DDP would add its gradient buckets (another ``[C, D]`` unless
   ``gradient_as_bucket_view=True``), so this baseline is, if anything, light.
2. ``PartialFC 1.0``: :class:`~sightkit.losses.PartialFC`, ``C / W`` centres per rank, the
   embeddings of the global batch gathered, the sharded cross-entropy.
3. ``PartialFC 0.1``: the same scoring a tenth of each rank's centres per step (the batch's
   classes always among them).

All configurations start from the same centres (``init_centres`` from one seed gives every
PartialFC rank its rows of the same ``[C, D]`` matrix), so their first losses must agree:
``agreement`` prints the full FC's loss (the mean of the ranks' losses, as DDP's averaging
implies) against PartialFC 1.0's.

Columns, per rank (the largest over the ranks, which differ by at most one centre):

- ``state MiB``: analytic, the centres plus SGD's momentum buffer (4 bytes each).
- ``step MiB``: measured, the peak resident memory (VmHWM, reset through
  ``/proc/self/clear_refs`` before the first timed step) during the timed steps minus the
  resident memory just before them (after a warm-up step has created the momentum buffer):
  the gradients, the normalised centres, the logits and softmax, the all-reduce's buffers.
- ``total MiB``: measured, that peak minus the resident memory before the configuration
  allocated anything: what the classifier costs a rank in all.
- ``step ms``: the median over the timed steps of the slowest rank's wall time (the ranks
  meet at a barrier before each step).
- ``comm MiB``: analytic, per rank and step, the size of every tensor all-reduced plus the
  output of every all-gather (the ring algorithms send about ``2 (W - 1) / W`` times that).

The workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed tensors to
the system at once and the resident memory follows the live tensors (tensors over 32 MiB,
such as the ``[C, D]`` ones, are handled so by default). With more ranks than
CPU cores the step times are oversubscribed (the output says so); the memory figures are not
affected.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from sightkit.losses import PartialFC, combined_margin_logits
from sightkit.losses.partial_fc import init_centres

SCALE, M1, M2, M3 = 64.0, 1.0, 0.5, 0.0
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
CONFIGS = {"full FC": None, "PartialFC 1.0": 1.0, "PartialFC 0.1": 0.1}
MIB = 2**20


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _resident() -> int:
    return _proc_status_kib("VmRSS") * 1024


def _reset_peak() -> None:
    # Writing 5 resets the process's VmHWM to its current resident size (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _peak() -> int:
    return _proc_status_kib("VmHWM") * 1024


def _problem(args: argparse.Namespace, rank: int, world: int) -> tuple[Tensor, Tensor]:
    """This rank's ``[B, D]`` embeddings (a leaf with ``requires_grad``) and ``[B]`` labels, cut
    from one global batch that depends only on the seed and W."""
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(world * args.batch, args.dim, generator=g)
    labels = torch.randint(0, args.classes, (world * args.batch,), generator=g)
    rows = slice(rank * args.batch, (rank + 1) * args.batch)
    return embeddings[rows].clone().requires_grad_(), labels[rows].clone()


def _seeded() -> torch.Generator:
    """The generator of the centres every configuration starts from (:func:`init_centres`)."""
    return torch.Generator().manual_seed(1)


def _full_fc_step(args: argparse.Namespace, world: int) -> tuple[Callable[[Tensor, Tensor], Tensor], int]:
    """A step of the replicated classifier, its gradient all-reduced as DDP would, and its number of centres."""
    weight = torch.nn.Parameter(init_centres(args.classes, args.dim, 0, args.classes, _seeded()))
    optimizer = torch.optim.SGD([weight], **SGD)

    def step(embeddings: Tensor, labels: Tensor) -> Tensor:
        cosine = F.linear(F.normalize(embeddings), F.normalize(weight))
        loss = F.cross_entropy(combined_margin_logits(cosine, labels, SCALE, M1, M2, M3), labels)
        loss.backward()
        if world > 1:
            dist.all_reduce(weight.grad)
            weight.grad.div_(world)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, args.classes


def _partial_fc_step(args: argparse.Namespace, sample_rate: float) -> tuple[Callable[[Tensor, Tensor], Tensor], int]:
    # The same initial centres as the full FC's: init_centres does not depend on the sharding.
    head = PartialFC(args.dim, args.classes, sample_rate, SCALE, M1, M2, M3, generator=_seeded())
    optimizer = torch.optim.SGD(head.parameters(), **SGD)

    def step(embeddings: Tensor, labels: Tensor) -> Tensor:
        loss = head(embeddings, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, head.num_local


def _measure(args: argparse.Namespace, name: str, rank: int, world: int) -> dict[str, float]:
    """One configuration on this rank: the first step's loss, then the timed steps' memory and times."""
    gc.collect()
    before = _resident()
    embeddings, labels = _problem(args, rank, world)
    sample_rate = CONFIGS[name]
    step, num_local = _full_fc_step(args, world) if sample_rate is None else _partial_fc_step(args, sample_rate)

    def run() -> Tensor:
        embeddings.grad = None
        return step(embeddings, labels)

    first_loss = run()  # also creates the momentum buffer, part of the state
    if sample_rate is None and world > 1:
        # DDP averages gradients, so the loss being minimised is the mean of the ranks' losses.
        dist.all_reduce(first_loss)
        first_loss /= world
    gc.collect()
    resident = _resident()
    _reset_peak()
    times = []
    for _ in range(args.steps):
        dist.barrier()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = _peak()
    slowest = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return {
        "loss": first_loss.item(),
        "centres": num_local,
        "step_bytes": peak - resident,
        "total_bytes": peak - before,
        "step_s": statistics.median(slowest.tolist()),
    }


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # Every code path once at a tiny size, so that lazy initialisation is charged to no configuration.
    tiny = argparse.Namespace(**{**vars(args), "classes": 256 * world, "steps": 1})
    for name in CONFIGS:
        _measure(tiny, name, rank, world)
    results = {}
    for name in CONFIGS:
        mine = _measure(args, name, rank, world)
        views: list[dict[str, float] | None] = [None] * world
        dist.all_gather_object(views, mine)
        # The largest figure over the ranks; the loss is the same on every rank.
        results[name] = {key: max(view[key] for view in views) for key in mine}
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: argparse.Namespace, world: int) -> dict[str, dict[str, float]]:
    """Run the workers of one world size and return rank 0's summary."""
    root = Path(__file__).resolve().parents[1]
    port = _free_port()
    command = [sys.executable, "-m", "benchmarks.partial_fc", "--worker", *_forwarded(args)]
    processes = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MALLOC_MMAP_THRESHOLD_="65536")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
        processes.append(
            subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=args.timeout)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        if process.returncode != 0:
            raise SystemExit(f"rank {rank} of {world} exited with {process.returncode}:\n{output[-3000:]}")
    lines = [line for line in outputs[0].splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1].removeprefix("RESULT "))


def _forwarded(args: argparse.Namespace) -> list[str]:
    return [f"--classes={args.classes}", f"--dim={args.dim}", f"--batch={args.batch}", f"--steps={args.steps}"]


def _communication_bytes(name: str, args: argparse.Namespace, world: int) -> int:
    """Bytes all-reduced plus bytes all-gathered per rank and step (module docstring)."""
    if world == 1:
        return 0
    if CONFIGS[name] is None:
        return 4 * args.classes * args.dim  # the [C, D] weight gradient
    rows = world * args.batch
    gathered = 8 * world + 8 * rows + 4 * rows * args.dim  # batch sizes, labels, embeddings
    reduced = 4 * rows * args.dim + 4 * rows + 8 * rows  # embedding gradients; row maxima; sums and targets
    return gathered + reduced


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks partial_fc", description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="per rank")
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after one warm-up step")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4], help="world sizes")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per world size")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    for world in args.ranks:
        if world < 1 or world > args.classes:
            parser.error(f"--ranks must be between 1 and --classes={args.classes}, got {world}")
    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    cores = os.cpu_count() or 1
    print(
        f"C={args.classes} D={args.dim} B={args.batch} per rank, {args.steps} timed steps, gloo, 1 thread per rank, "
        f"CPU count {cores}, load average {load:.1f}"
    )
    results = {}
    for world in args.ranks:
        started = time.perf_counter()
        results[world] = _launch(args, world)
        print(f"  {world} rank(s) measured in {time.perf_counter() - started:.0f} s", flush=True)

    header = (
        f"{'config':14s} {'ranks':>5s} {'centres':>9s} {'state MiB':>9s} {'step MiB':>9s} {'total MiB':>9s} "
        f"{'vs full':>7s} {'step ms':>9s} {'vs full':>7s} {'comm MiB':>9s}"
    )
    print(header)
    print("-" * len(header))
    for name in CONFIGS:
        for world in args.ranks:
            row, full = results[world][name], results[world]["full FC"]
            state = 2 * 4 * row["centres"] * args.dim
            print(
                f"{name:14s} {world:5d} {row['centres']:9d} {state / MIB:9.1f} {row['step_bytes'] / MIB:9.1f} "
                f"{row['total_bytes'] / MIB:9.1f} {row['total_bytes'] / full['total_bytes']:7.2f} "
                f"{row['step_s'] * 1e3:9.1f} {row['step_s'] / full['step_s']:7.2f} "
                f"{_communication_bytes(name, args, world) / MIB:9.2f}"
            )
    oversubscribed = [w for w in args.ranks if w > cores]
    if oversubscribed:
        print(f"step times at {oversubscribed} ranks are oversubscribed: more processes than the {cores} CPU cores")

    ratios = {
        name: " / ".join(
            f"{results[w][name]['total_bytes'] / results[args.ranks[0]][name]['total_bytes']:.2f}" for w in args.ranks
        )
        for name in CONFIGS
    }
    print(
        f"scaling of the measured per-rank total over {args.ranks} ranks (x that at {args.ranks[0]}): "
        + ", ".join(f"{name} {ratio}" for name, ratio in ratios.items())
        + ": full FC stays ~C per rank, PartialFC ~C / W"
    )
    million = 2 * 4 * 10**6 * args.dim / 2**30
    print(
        "per-rank state (centres + momentum): full FC keeps all C centres on every rank, PartialFC C / W; at "
        f"C = 1,000,000 and D = {args.dim}: full FC {million:.2f} GiB per rank at any W, PartialFC "
        + " / ".join(f"{million / w:.2f}" for w in args.ranks)
        + f" GiB at {args.ranks} ranks"
    )
    for world in args.ranks:
        full, ours = results[world]["full FC"]["loss"], results[world]["PartialFC 1.0"]["loss"]
        print(
            f"agreement at {world} rank(s), first step: full FC loss {full:.6f}, PartialFC 1.0 {ours:.6f}, "
            f"|diff| {abs(full - ours):.1e}, relative {abs(full - ours) / abs(full):.1e} "
            f"({'within' if abs(full - ours) <= 1e-5 else 'NOT within'} 1e-5)"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
