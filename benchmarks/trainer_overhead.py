"""Trainer overhead: time per optimiser step of ``sightkit.engine.Trainer`` against a bare,
hand-written PyTorch loop doing the same work, in one process.

Both train the same small CNN on the same in-memory images (batch 32, 10 classes) for the
same steps with AdamW (no decay on 1-D parameters), a cosine schedule, gradient clipping
at norm 1, the same data order, and one checkpoint write at the end. The trainer adds
what it is for: loss dict + weights, the non-finite guard, meters and JSON-lines logging,
the resumable sampler, and its checkpoint (full state + RNG) and safetensors export.
Times are this process's CPU time (``time.process_time``),
which other processes on a shared machine disturb less than wall time. Each side runs N
and 3N steps; the slope is the cost per step and the intercept the fixed cost of a run
(set-up, final checkpoint). Bare and trainer runs come in pairs, in alternating order, and
the overhead is the median of the paired per-step ratios; the final
weights of both are compared too (they should agree to float rounding).

    python -m benchmarks trainer_overhead [--steps 40] [--repeats 9] [--threads 1 2]

At each ``--threads`` count (default 1 and 2); figures in ``benchmarks/results/trainer_overhead.json``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary
from sightkit.engine import TrainConfig, Trainer

BATCH = 32


class Images(Dataset):
    def __init__(self, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(size, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, 10, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.images[index], {"label": self.labels[index]}


def collate(samples: list) -> tuple[Tensor, list[dict[str, Tensor]]]:
    return torch.stack([image for image, _ in samples]), [target for _, target in samples]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def criterion(outputs: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    labels = torch.stack([t["label"] for t in targets])
    return {"loss_ce": nn.functional.cross_entropy(outputs, labels)}


def bare_loop(data: Images, steps: int, out: Path) -> tuple[float, nn.Module]:
    """The loop a careful person writes by hand for the same job."""
    model = make_model()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 1e-4}], lr=1e-3
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    # The trainer's order for epoch 0: a permutation seeded by seed + epoch (DistributedSampler's rule).
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    loader = DataLoader(data, batch_size=BATCH, sampler=order, collate_fn=collate, drop_last=True)
    start = time.process_time()
    model.train()
    for images, targets in itertools.islice(loader, steps):
        loss = criterion(model(images), targets)["loss_ce"]
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out / "bare.pt")
    return time.process_time() - start, model


def trainer_run(data: Images, steps: int, out: Path) -> tuple[float, nn.Module]:
    config = TrainConfig(
        out=str(out / "run"), epochs=1, steps=steps, batch=BATCH, lr=1e-3, weight_decay=1e-4, clip_grad_norm=1.0,
        progress=False, plot=False, exist_ok=True, log_every=50,
    )  # fmt: skip
    trainer = Trainer(make_model(), criterion, data, config, loss_weights={"loss_ce": 1.0}, collate_fn=collate)
    start = time.process_time()
    trainer.fit()
    return time.process_time() - start, trainer.unwrapped


def measure(args: argparse.Namespace, threads: int) -> dict[str, float]:
    """Print the overhead at the current thread count and return its figures."""
    short, long = args.steps, 3 * args.steps
    data = Images(long * BATCH)
    times: dict[tuple[str, int], list[float]] = {}
    models: dict[str, nn.Module] = {}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        bare_loop(data, 5, out)  # warm-up: first-call costs (allocator, kernels, lazy imports)
        trainer_run(data, 5, out)
        for repeat in range(args.repeats):
            # Alternate which goes first, so that a drift in machine load favours neither.
            runs = (("bare", bare_loop), ("trainer", trainer_run))
            for name, run in runs if repeat % 2 == 0 else runs[::-1]:
                for steps in (short, long):
                    seconds, models[name] = run(data, steps, out)
                    times.setdefault((name, steps), []).append(seconds)
    # Per-step cost = slope between the short and the long run, which cancels the fixed
    # cost of a run (set-up, the final checkpoint); the fixed cost is the intercept.
    per_step = {
        name: [(b - a) / (long - short) for a, b in zip(times[name, short], times[name, long], strict=True)]
        for name in ("bare", "trainer")
    }
    fixed = {
        name: statistics.median(t - short * s for t, s in zip(times[name, short], per_step[name], strict=True))
        for name in per_step
    }
    median = {name: statistics.median(per_step[name]) for name in per_step}
    ratios = [t / b for t, b in zip(per_step["trainer"], per_step["bare"], strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    difference = max(
        (a - b).abs().max().item()
        for a, b in zip(models["bare"].state_dict().values(), models["trainer"].state_dict().values(), strict=True)
        if a.is_floating_point()
    )
    print(f"small CNN, batch {BATCH}, runs of {short} and {long} steps, {threads} thread(s), {args.repeats} pairs")
    for name, label in (("bare", "bare loop"), ("trainer", "Trainer")):
        print(
            f"  {label:<9}: {1e3 * median[name]:6.2f} ms/step, "
            f"{1e3 * fixed[name]:6.1f} ms fixed per run (median CPU time)"
        )
    print(
        f"  overhead per step: {100 * (statistics.median(ratios) - 1):+.2f} % (median of paired ratios; quartiles "
        f"{100 * (quartiles[0] - 1):+.2f} % .. {100 * (quartiles[2] - 1):+.2f} %)   target < 5 %"
    )
    print(f"  final weights after {long} steps, max |bare - trainer|: {difference:.2e}")
    return {
        **{f"{name}_ms_per_step": round(1e3 * median[name], 3) for name in per_step},
        **{f"{name}_fixed_ms": round(1e3 * fixed[name], 1) for name in per_step},
        "overhead_percent": round(100 * (statistics.median(ratios) - 1), 2),
        "max_weight_difference": difference,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="length of the short run; the long run is 3x")
    parser.add_argument("--repeats", type=int, default=9)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    results, summary = Results("trainer_overhead", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            entry.update(measure(args, threads))
            summary.append(("Trainer vs bare loop", threads, entry["trainer_ms_per_step"], entry["bare_ms_per_step"]))
    # printed as bare / trainer: below 1 by the trainer's overhead
    print_ratio_summary("Trainer, CPU ms per step (ours: Trainer, peer: bare loop)", summary)
    results.write()
