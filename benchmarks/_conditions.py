"""The conditions every benchmark states beside its figures, and where it writes them.

Every benchmark takes ``--threads`` with a list of torch intra-op thread counts (default
``1 2``), measures ours and the peer in the same process at each count, prints the ratio at
each, and writes its figures with the conditions (machine, thread count, load average before
and after each measurement, versions, arguments) to ``benchmarks/results/<name>.json``, from
which documentation tables are generated. A figure measured while the load average exceeds
the number of CPUs says so: wall times stretch on a shared machine, OpenMP threads most of all.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_THREADS = (1, 2)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {value}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser, default: tuple[int, ...] = DEFAULT_THREADS) -> None:
    """``--threads N [N ...]``: the torch intra-op thread counts to measure at, in order."""
    parser.add_argument(
        "--threads",
        type=_positive,
        nargs="+",
        default=list(default),
        help=f"torch intra-op thread counts, one measurement each (default: {' '.join(map(str, default))})",
    )


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01."""
    return [round(value, 2) for value in os.getloadavg()]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """The machine and the software versions the figures were measured with."""
    return {
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def load_note(load: list[float]) -> str:
    """``load 0.52`` or, above one per CPU, ``load 3.10 (busy: > 2 CPUs)``."""
    cpus = os.cpu_count() or 1
    busy = f" (busy: > {cpus} CPUs)" if load[0] > cpus else ""
    return f"load {load[0]:.2f}{busy}"


class Results:
    """Collects one benchmark's figures, one entry per measurement, and writes them as JSON.

    Usage::

        results = Results("iou_loss", args)
        for threads in args.threads:
            with results.at(threads) as entry:   # sets the threads, records the load before and after
                entry["giou"] = {"ours_ms": ..., "peer_ms": ..., "ratio": ...}
        results.write()
    """

    def __init__(self, name: str, args: argparse.Namespace | None = None) -> None:
        self.name = name
        self.data: dict[str, Any] = {
            "benchmark": name,
            # the command line as given, or the benchmark's name alone when run by ``python -m benchmarks all``
            "command": " ".join(["python -m benchmarks", name, *(sys.argv[2:] if sys.argv[1:2] == [name] else [])]),
            "arguments": {key: value for key, value in vars(args).items()} if args is not None else {},
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "runs": [],
        }

    @contextmanager
    def at(self, threads: int, **conditions: Any) -> Iterator[dict[str, Any]]:
        """Set torch's intra-op threads to ``threads`` and yield the entry for that measurement;
        the load average before and after is recorded, and printed with the thread count."""
        torch.set_num_threads(threads)
        entry: dict[str, Any] = {"threads": threads, **conditions, "load_before": load_average()}
        print(f"--- {threads} thread(s), {load_note(entry['load_before'])} ---", flush=True)
        yield entry
        entry["load_after"] = load_average()
        self.data["runs"].append(entry)

    def write(self, directory: Path = RESULTS) -> Path:
        """Write ``<directory>/<name>.json`` (the newest run replaces the previous one)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        print(f"figures written to {path}")
        return path


def ratio(peer: float, ours: float) -> float | None:
    """How many times faster (or smaller) ours is: ``peer / ours``; None when ``ours`` is 0."""
    return round(peer / ours, 3) if ours > 0 else None


def print_ratio_summary(title: str, rows: list[tuple[str, int, float, float]], unit: str = "ms") -> None:
    """Print ``(name, threads, ours, peer)`` rows as one table with the ratio ``peer / ours``
    at each thread count, and whether the ratio holds from the first thread count to the others."""
    print(f"\n{title}: peer / ours at each thread count")
    print(f"{'':30} {'threads':>7} {'ours ' + unit:>10} {'peer ' + unit:>10} {'ratio':>8}")
    first: dict[str, float] = {}
    for name, threads, ours, peer in rows:
        value = peer / ours if ours > 0 else float("nan")
        held = ""
        if name in first:
            held = "  (holds)" if value >= first[name] else f"  (lower than {first[name]:.2f}x)"
        else:
            first[name] = value
        print(f"{name:30} {threads:7d} {ours:10.2f} {peer:10.2f} {value:7.2f}x{held}")
