"""Latency of an exported detector in onnxruntime against the same module in eager PyTorch.

For each detector (random weights, ``--classes`` classes, fixed ``--size`` square input), the
module ``sightkit export onnx`` exports (:class:`sightkit.models.DeployDetector`: the network
and its family's postprocess, top-k for DETR and DINO, NMS for VFNet) runs eagerly under
``torch.inference_mode`` and as the exported graph in onnxruntime (CPU provider), at batch 1
and 8, with torch's and onnxruntime's intra-op threads both set to each ``--threads`` count.
Each figure is the median of ``--repeats`` calls after one warm-up call; the ratio is eager /
onnxruntime (above 1: the ONNX file is faster). Exports are cached in ``--cache`` (an export
takes minutes on a busy CPU).

    python -m benchmarks export_latency --threads 1 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from benchmarks._conditions import RESULTS, add_threads_argument, load_average, load_note, machine
from benchmarks._timing import median_time

MODELS = ("detr_r18_tiny", "dino_r18_tiny", "vfnet_r18_tiny")


def exported(name: str, classes: int, size: int, cache: Path) -> Path:
    """The ONNX file of ``name`` with random weights (seed 0), exported once per setting."""
    from sightkit.engine.checkpoint import save_weights
    from sightkit.models import create_model
    from sightkit.tasks.export import ExportConfig, export_onnx

    folder = cache / f"{name}_c{classes}_s{size}"
    onnx = folder / "model.onnx"
    if onnx.is_file():
        return onnx
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    metadata = {
        "task": "detect", "model": name, "model_args": "{}", "classes": json.dumps([f"c{i}" for i in range(classes)]),
        "category_ids": json.dumps(list(range(1, classes + 1))), "imgsz": str(size), "max_size": str(2 * size),
        "mean": json.dumps([0.485, 0.456, 0.406]), "std": json.dumps([0.229, 0.224, 0.225]),
    }  # fmt: skip
    save_weights(create_model(name, num_classes=classes), folder / "model.safetensors", metadata)
    print(f"exporting {name} (cached in {folder}) ...", flush=True)
    export_onnx(ExportConfig(weights=str(folder / "model.safetensors"), out=str(onnx), check=False), Console())
    return onnx


def measure(onnx: Path, threads: int, batches: list[int], size: int, repeats: int) -> list[dict[str, object]]:
    """Eager and onnxruntime latency of one exported file at each batch size, ``threads`` threads."""
    import onnxruntime

    import sightkit
    from sightkit.models.deploy import DeployDetector

    torch.set_num_threads(threads)
    predictor = sightkit.load(onnx.with_suffix(".safetensors"), "cpu")
    eager = DeployDetector.for_model(predictor.model, top_k=int(predictor.options["top_k"])).eval()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    rows = []
    for batch in batches:
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        feed = {"images": images.numpy()}
        load_before = load_average()
        with torch.inference_mode():
            eager_s = median_time(lambda images=images: eager(images), repeats)
        onnx_s = median_time(lambda feed=feed: session.run(None, feed), repeats)
        with torch.inference_mode():
            want = eager(images)
        got = session.run(None, feed)
        agree = all(np.array_equal(g, w.numpy()) for g, w in zip(got[2:], want[2:], strict=True))
        box_diff = float(np.abs(got[0] - want[0].numpy()).max())
        rows.append(
            {
                "model": predictor.name,
                "threads": threads,
                "batch": batch,
                "eager ms": round(eager_s * 1000, 1),
                "onnxruntime ms": round(onnx_s * 1000, 1),
                "eager / onnxruntime": round(eager_s / onnx_s, 2),
                "same labels, max box diff px": f"{agree}, {box_diff:.1e}",
                "load before / after": [load_before[0], load_average()[0]],
            }
        )
        row = rows[-1]
        print(
            f"{row['model']:16} threads {threads} batch {batch}: eager {row['eager ms']:8.1f} ms, onnxruntime "
            f"{row['onnxruntime ms']:8.1f} ms, ratio {row['eager / onnxruntime']:.2f}x ({load_note(load_before)})",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=320, help="square input side (the tiny presets' imgsz)")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench/export_latency"))
    add_threads_argument(parser)
    args = parser.parse_args(argv)

    start_load = load_average()
    files = {name: exported(name, args.classes, args.size, args.cache) for name in args.models}
    rows = [
        row
        for threads in args.threads
        for name in args.models
        for row in measure(files[name], threads, args.batches, args.size, args.repeats)
    ]
    given = argv if argv is not None else sys.argv[1:]
    record = {
        "benchmark": "export_latency",
        "command": " ".join(["python -m benchmarks export_latency", *given]),
        "conditions": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": f"{machine()['cpus']} CPUs {machine()['cpu']}, torch {torch.__version__}, "
            f"onnxruntime {__import__('onnxruntime').__version__}",
            "load": f"{start_load[0]} at start, {load_average()[0]} at end (1-minute load average)",
            "input": f"{args.size} x {args.size}, {args.classes} classes, random weights, top 100 per image",
            "repeats": f"median of {args.repeats} after 1 warm-up",
        },
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "export_latency.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()
