"""Load test of ``sightkit serve`` on loopback: dynamic batching on vs off.

``python -m benchmarks serve_load [--requests 64] [--rounds 2] [--clients 1,8,32] [--imgsz 320]``

A detector (detr_r18_tiny with random weights, written with the metadata ``sightkit train
detect`` writes) is served by two ``sightkit serve`` subprocesses, one with batching off
(``max_batch=1``) and one on (``max_batch=32 max_wait_ms=5``), measured in alternation so that
the shared machine's changing load falls on both alike. This process is the client:
for each number of concurrent clients it sends a fixed number of requests (each client posts
one image, waits for the answer, posts the next) and measures throughput and the p50/p99
latency, and the mean images per forward pass from the server's metrics. Every request goes
to 127.0.0.1 and the loops are bounded by count.

The issue's target: with 32 clients batching gives at least 2x the throughput of no batching,
with p99 latency at most 3x the single-request latency (1 client, no batching). In this
closed loop every client waits for its answer, so the latency at N clients is about
N / throughput (Little's law): the p99 target needs a device with capacity to spare.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

MODES = {"off": ["max_batch=1", "max_wait_ms=0"], "on": ["max_batch=32", "max_wait_ms=5"]}


def write_weights(folder: Path, imgsz: int) -> Path:
    import torch

    from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from sightkit.engine.checkpoint import save_weights
    from sightkit.models.registry import create_model

    torch.manual_seed(0)
    classes = ["circle", "square", "triangle", "star", "hexagon"]
    metadata = {
        "task": "detect",
        "model": "detr_r18_tiny",
        "classes": json.dumps(classes),
        "category_ids": json.dumps(list(range(1, len(classes) + 1))),
        "imgsz": str(imgsz),
        "max_size": str(imgsz * 2),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
    }
    path = folder / "detr_r18_tiny.safetensors"
    save_weights(create_model("detr_r18_tiny", num_classes=len(classes)), path, metadata)
    return path


def png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(weights: Path, mode: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "sightkit", "serve", f"weights={weights}", f"port={port}", "conf=0"]
    command += [*MODES[mode], f"threads={threads}", "log_level=warning", "max_queue=1024", "timeout_s=300"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start within 180 s")


async def load(url: str, images: list[bytes], clients: int, requests: int) -> tuple[float, list[float]]:
    """``requests`` posts from ``clients`` concurrent clients; returns (wall seconds, latencies)."""
    latencies: list[float] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

        async def one_client() -> None:
            for index in counter:  # the clients share one bounded counter
                start = time.perf_counter()
                files = {"images": (f"{index}.png", images[index % len(images)], "image/png")}
                response = await client.post("/v1/predict", files=files)
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return time.perf_counter() - start, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def batch_totals(url: str) -> tuple[float, float]:
    """(images, forward passes) so far, from the server's Prometheus metrics."""
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(("sightkit_batch_size_sum", "sightkit_batch_size_count")):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    return values.get("sightkit_batch_size_sum", 0.0), values.get("sightkit_batch_size_count", 0.0)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per (mode, clients) cell and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating which mode goes first")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--imgsz", type=int, default=320, help="image side (the model's input size too)")
    parser.add_argument("--threads", type=int, default=0, help="server's torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    print(
        f"CPUs {os.cpu_count()}, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"{args.rounds} x {args.requests} requests of a {args.imgsz}x{args.imgsz} PNG per cell, detr_r18_tiny"
    )
    images = [png(args.imgsz, seed) for seed in range(8)]
    walls: dict[tuple[str, int], float] = {}
    latencies: dict[tuple[str, int], list[float]] = {}
    batches: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        weights = write_weights(Path(folder), args.imgsz)
        # Both servers run all along (an idle one costs no CPU) and the cells alternate between
        # them, so that the shared machine's changing load falls on both modes alike.
        servers = {mode: start_server(weights, mode, args.threads) for mode in MODES}
        try:
            answers = {
                mode: httpx.post(f"{url}/v1/predict", files={"images": ("0.png", images[0])}).json()
                for mode, (_, url) in servers.items()
            }
            for _, url in servers.values():
                asyncio.run(load(url, images, 2, 8))  # warm-up
            for round_index in range(args.rounds):
                for count in clients:
                    order = list(MODES) if round_index % 2 == 0 else list(MODES)[::-1]
                    for mode in order:
                        url = servers[mode][1]
                        images_before, passes_before = batch_totals(url)
                        wall, times = asyncio.run(load(url, images, count, args.requests))
                        images_after, passes_after = batch_totals(url)
                        walls[(mode, count)] = walls.get((mode, count), 0.0) + wall
                        latencies.setdefault((mode, count), []).extend(times)
                        batches.setdefault((mode, count), []).append(
                            (images_after - images_before) / max(passes_after - passes_before, 1)
                        )
        finally:
            for process, _ in servers.values():
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    print(f"\n{'batching':>8} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6}")
    rate, p50, p99 = {}, {}, {}
    for mode in MODES:
        for count in clients:
            key = (mode, count)
            rate[key] = len(latencies[key]) / walls[key]
            p50[key] = percentile(latencies[key], 0.5) * 1000
            p99[key] = percentile(latencies[key], 0.99) * 1000
            batch = sum(batches[key]) / len(batches[key])
            print(f"{mode:>8} {count:>7} {rate[key]:8.2f} {p50[key]:8.1f} {p99[key]:8.1f} {batch:6.2f}")
    single = p50[("off", clients[0])]
    print(f"\nsingle-request latency (off, {clients[0]} client): p50 {single:.1f} ms")
    for count in clients:
        ratio = rate[("on", count)] / rate[("off", count)]
        print(
            f"{count:>3} clients: throughput on/off {ratio:.2f}x; "
            f"p99 with batching {p99[('on', count)] / single:.2f}x single"
        )
    same = answers["on"]["results"][0]["boxes"] == answers["off"]["results"][0]["boxes"]
    print(f"answers of one image equal with batching on and off: {same}")
