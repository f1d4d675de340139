"""DETR train step against transformers' DetrForObjectDetection, and inference eager vs ONNX Runtime.

``python -m benchmarks detr_train_step [--configs tiny r50] [--repeats 5] [--threads 1 2] [--no-rss] [--no-onnx]``

Everything is measured at each ``--threads`` count (default 1 and 2) of torch's and ONNX
Runtime's intra-op threads: one thread does the same work on one core on both sides; with two
threads on a loaded two-core machine the wall times mostly measure how each library's thread
pool copes with being descheduled (the load average is printed with each). The figures go to
``benchmarks/results/detr_train_step.json``.

Train step (batch 2, CPU, float32): ``zero_grad``, forward, loss (with auxiliary losses),
backward, AdamW step, for two configurations built the same way on both sides:

- ``tiny``: the ``detr_r18_tiny`` architecture (ResNet-18 cut after layer3, d_model 128,
  4 heads, 2+2 layers, FFN 512, 20 queries, 5 classes) at 256 x 256;
- ``r50``: ``detr_r50`` (ResNet-50, d_model 256, 8 heads, 6+6 layers, FFN 2048, 100 queries,
  91 classes) at 384 x 384.

The peer is ``DetrForObjectDetection`` from a ``DetrConfig`` whose ``backbone_config`` is a
``ResNetConfig`` of the same depth, widths and block type (transformers' own ResNet: no timm,
nothing downloaded, random init), ``auxiliary_loss=True`` and the same dropout (attention,
FFN and residual, 0.1 each as in DETR). Both use frozen BatchNorm in the backbone, as DETR
does; the registered ``detr_r18_tiny`` trains ordinary BatchNorm instead, and is timed on
an extra line. The same backbone stages train on both sides (all five for ``tiny``;
layer2-4 for ``r50``): transformers freezes its own ResNet entirely (its freezing rule
looks for ``stage.1`` in names that read ``stages.1``), so the benchmark turns those stages
back on. The peer's weights are copied from ours, so the two compute the same function:
the printed agreement compares their outputs (eval mode) and their total losses
(1 x CE + 5 x L1 + 2 x GIoU, summed over the decoder layers).

Time: the median over ``--repeats`` steps after a warm-up, ours and the peer alternating
step by step, so that a change in machine load hits both. Wall time, and process CPU time
(steadier on a shared machine; it sums the threads).

Peak memory: each side runs in a fresh process that builds the model, the optimiser (its
state created by a step with zero gradients) and the batch, hands freed heap pages back to
the system (glibc ``malloc_trim``) and resets the kernel's high-water mark of resident
memory (``5 > /proc/self/clear_refs``); one train step then runs, and the result is
``VmHWM`` after it minus ``VmRSS`` before it: activations, gradients and allocator overheads.

Inference (batch 1, eval mode, ``torch.no_grad``): our models eager against the same model
exported with ``torch.onnx.export(dynamo=True)`` run by ONNX Runtime's CPU provider, with
the largest output difference.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio
from sightkit.losses import SetCriterion
from sightkit.models import DETR, create_model


@dataclass(frozen=True)
class Config:
    model: str
    size: int
    num_classes: int
    blocks: str  # transformers' ResNet layer_type
    depths: tuple[int, ...]
    widths: tuple[int, ...]


CONFIGS = {
    "tiny": Config("detr_r18_tiny", 256, 5, "basic", (2, 2, 2), (64, 128, 256)),
    "r50": Config("detr_r50", 384, 91, "bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
}
BATCH = 2
OBJECTS = 4


def build_ours(config: Config, norm: str = "frozen_bn") -> DETR:
    overrides = {"num_classes": config.num_classes}
    if config.model == "detr_r18_tiny":
        overrides["backbone_norm"] = norm
    return create_model(config.model, **overrides)


def build_peer(config: Config, ours: DETR) -> nn.Module:
    """transformers' DETR with ours's architecture, trainable stages and weights."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
    from transformers.utils import logging

    logging.set_verbosity_error()
    transformer = ours.transformer
    encoder, decoder = transformer.encoder_layers, transformer.decoder_layers
    backbone = ResNetConfig(
        layer_type=config.blocks,
        depths=list(config.depths),
        hidden_sizes=list(config.widths),
        embedding_size=64,
        out_features=[f"stage{len(config.depths)}"],
    )
    peer_config = DetrConfig(
        backbone_config=backbone,
        num_labels=config.num_classes,
        num_queries=ours.num_queries,
        d_model=transformer.d_model,
        encoder_layers=len(encoder),
        decoder_layers=len(decoder),
        encoder_attention_heads=transformer.nhead,
        decoder_attention_heads=transformer.nhead,
        encoder_ffn_dim=encoder[0].ffn.linear1.out_features,
        decoder_ffn_dim=decoder[0].ffn.linear1.out_features,
        # DETR drops out attention weights, the FFN's hidden layer and each residual branch, all
        # at the same rate; transformers splits these into three settings.
        dropout=decoder[0].dropout1.p,
        attention_dropout=decoder[0].self_attn.dropout,
        activation_dropout=decoder[0].ffn.dropout.p,
        auxiliary_loss=True,
    )
    peer = DetrForObjectDetection(peer_config)
    missing, unexpected = peer.load_state_dict(peer_state_dict(ours), strict=False)
    if unexpected or any("num_batches_tracked" not in key for key in missing):
        raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    trainable = {name for name, p in ours.backbone.named_parameters() if p.requires_grad}
    ours_names = {_peer_backbone_name(name): name for name, _ in ours.backbone.named_parameters()}
    for name, parameter in peer.model.backbone.model.named_parameters():
        parameter.requires_grad_(ours_names[name] in trainable)
    return peer


def _peer_backbone_name(name: str) -> str:
    """Our backbone parameter name (``body.layer2.0.conv1.weight``) -> transformers' ResNet name."""
    name = name.removeprefix("body.")
    name = re.sub(r"^stem\.0\.", "embedder.embedder.convolution.", name)
    name = re.sub(r"^stem\.1\.", "embedder.embedder.normalization.", name)
    name = re.sub(r"^layer(\d)\.(\d+)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.", name)
    name = re.sub(r"\.conv(\d)\.", lambda m: f".layer.{int(m[1]) - 1}.convolution.", name)
    name = re.sub(r"\.bn(\d)\.", lambda m: f".layer.{int(m[1]) - 1}.normalization.", name)
    return name.replace(".downsample.0.", ".shortcut.convolution.").replace(
        ".downsample.1.", ".shortcut.normalization."
    )


_LAYER_RENAMES = {
    "norm1": "self_attn_layer_norm",
    "ffn.linear1": "mlp.fc1",
    "ffn.linear2": "mlp.fc2",
    "cross_attn": "encoder_attn",
}


def peer_state_dict(ours: DETR) -> dict[str, Tensor]:
    """Our weights under transformers' names (attention in-projections split into q, k, v)."""
    out: dict[str, Tensor] = {}
    for name, value in ours.state_dict().items():
        if name.startswith("backbone."):
            out["model.backbone.model." + _peer_backbone_name(name.removeprefix("backbone."))] = value
            continue
        head, dot, rest = name.partition(".")
        if head in ("input_proj", "query_embed"):
            target = {"input_proj": "model.input_projection", "query_embed": "model.query_position_embeddings"}[head]
            out[f"{target}{dot}{rest}"] = value
        elif head == "class_embed":
            out[f"class_labels_classifier.{rest}"] = value
        elif head == "bbox_embed":
            index, _, param = rest.partition(".")
            out[f"bbox_predictor.layers.{int(index) // 3}.{param}"] = value  # torchvision MLP: Linear, ReLU, Dropout
        elif rest.startswith("decoder_norm."):
            out["model.decoder.layernorm." + rest.removeprefix("decoder_norm.")] = value
        else:
            out.update(_peer_layer_entries(rest, value))
    return out


def _peer_layer_entries(name: str, value: Tensor) -> dict[str, Tensor]:
    stack, index, rest = name.split(".", 2)  # encoder_layers.0.self_attn.in_proj_weight
    prefix = f"model.{stack.removesuffix('_layers')}.layers.{index}."
    is_decoder = stack == "decoder_layers"
    renames = {**_LAYER_RENAMES, "norm2": "encoder_attn_layer_norm" if is_decoder else "final_layer_norm"}
    renames["norm3"] = "final_layer_norm"
    for ours_name, peer_name in renames.items():
        if rest.startswith(ours_name + "."):
            rest = peer_name + rest[len(ours_name) :]
    module, _, param = rest.rpartition(".")
    if param in ("in_proj_weight", "in_proj_bias"):
        kind = param.removeprefix("in_proj_")
        q, k, v = value.chunk(3)
        return {f"{prefix}{module}.{p}_proj.{kind}": t for p, t in (("q", q), ("k", k), ("v", v))}
    return {prefix + rest.replace("out_proj.", "o_proj."): value}


def make_batch(config: Config, seed: int = 0) -> tuple[Tensor, list[dict[str, Tensor]]]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, 3, config.size, config.size, generator=generator)
    targets = []
    for _ in range(BATCH):
        centres = torch.rand(OBJECTS, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(OBJECTS, 2, generator=generator) * 0.25 + 0.05
        labels = torch.randint(config.num_classes, (OBJECTS,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat((centres, sizes), dim=1)})
    return images, targets


Step = tuple[Callable[[], float], torch.optim.Optimizer]


def ours_step_fn(model: DETR, images: Tensor, targets: list[dict[str, Tensor]]) -> Step:
    criterion = SetCriterion(model.num_classes, aux_layers=len(model.transformer.decoder_layers) - 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)

    def step() -> float:
        optimizer.zero_grad()
        losses = criterion(model(images), targets)
        total = sum(weight * losses[name] for name, weight in criterion.weight_dict.items())
        total.backward()
        optimizer.step()
        return total.item()

    return step, optimizer


def peer_step_fn(model: nn.Module, images: Tensor, targets: list[dict[str, Tensor]]) -> Step:
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    pixel_mask = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.int64)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)

    def step() -> float:
        optimizer.zero_grad()
        loss = model(pixel_values=images, pixel_mask=pixel_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    return step, optimizer


def alternating_medians(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each function, run in turns after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}


def value_agreement(config: Config) -> tuple[float, float, float]:
    """(max |logits diff|, max |boxes diff|, |loss diff| / loss) of ours and the peer with the same weights."""
    ours = build_ours(config).eval()
    peer = build_peer(config, ours).eval()
    images, targets = make_batch(config, seed=1)
    criterion = SetCriterion(config.num_classes, aux_layers=len(ours.transformer.decoder_layers) - 1)
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    with torch.no_grad():
        outputs = ours(images)
        losses = criterion(outputs, targets)
        ours_loss = sum(weight * losses[name] for name, weight in criterion.weight_dict.items()).item()
        peer_out = peer(pixel_values=images, pixel_mask=torch.ones(BATCH, config.size, config.size), labels=labels)
    logits = (outputs["pred_logits"] - peer_out.logits).abs().max().item()
    boxes = (outputs["pred_boxes"] - peer_out.pred_boxes).abs().max().item()
    return logits, boxes, abs(ours_loss - peer_out.loss.item()) / abs(peer_out.loss.item())


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _child(config_name: str, impl: str, threads: int) -> None:
    """One train step in this fresh process; prints the peak growth of resident memory in MiB."""
    torch.set_num_threads(threads)
    config = CONFIGS[config_name]
    ours = build_ours(config, norm="bn" if impl == "registered" else "frozen_bn")
    images, targets = make_batch(config)
    model = build_peer(config, ours) if impl == "peer" else ours
    step, optimizer = (peer_step_fn if impl == "peer" else ours_step_fn)(model, images, targets)
    # Create the optimiser state (two tensors per parameter) before measuring: a step with zero gradients.
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _proc_status_kib("VmRSS")
    step()
    print((_proc_status_kib("VmHWM") - before) / 1024)


def rss_peak_mib(config_name: str, impl: str, threads: int) -> float:
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "benchmarks", "detr_train_step", "--child", config_name, impl, str(threads)]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def onnx_latency(config: Config, repeats: int, threads: int) -> tuple[float, float, float, float]:
    """(eager s, ONNX Runtime s, max |difference|, export s) at batch 1."""
    import onnxruntime as ort

    model = create_model(config.model, num_classes=config.num_classes).eval()
    images = torch.randn(1, 3, config.size, config.size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        start = time.perf_counter()
        # The exporter reports its progress on stdout and the graph optimiser on the log.
        optimiser_log = logging.getLogger("onnxscript")
        level = optimiser_log.level
        optimiser_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (images,), path, dynamo=True, input_names=["images"])
        finally:
            optimiser_log.setLevel(level)
        export_time = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"images": images.numpy()}

    def eager() -> float:
        with torch.no_grad():
            model(images)
        return 0.0

    def onnx() -> float:
        session.run(None, feed)
        return 0.0

    medians = alternating_medians({"eager": eager, "onnx": onnx}, repeats)
    with torch.no_grad():
        expected = model(images)
    got = session.run(None, feed)
    difference = max(
        (torch.from_numpy(got[i]) - expected[key]).abs().max().item()
        for i, key in enumerate(("pred_logits", "pred_boxes"))
    )
    return medians["eager"][0], medians["onnx"][0], difference, export_time


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks detr_train_step", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per side")
    add_threads_argument(parser)
    parser.add_argument("--no-rss", action="store_true", help="skip the fresh-process memory measurement")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime latency")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return

    print(f"CPU, batch {BATCH}, float32, median of {args.repeats} steps, sides alternating, {os.cpu_count()} CPUs")
    results, summary = Results("detr_train_step", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            run(args, threads, entry, summary)
    print_ratio_summary("DETR train step against transformers, wall time", summary)
    results.write()


def run(
    args: argparse.Namespace, threads: int, entry: dict[str, Any], summary: list[tuple[str, int, float, float]]
) -> None:
    """Print the tables at the current thread count; figures into ``entry`` and ``summary``."""
    print(f"{'config':6} {'impl':34} {'wall ms':>8} {'cpu ms':>8} {'peak MiB':>9}")
    for name in args.configs:
        config = CONFIGS[name]
        torch.manual_seed(0)
        ours = build_ours(config)
        peer = build_peer(config, ours)
        images, targets = make_batch(config)
        fns = {"ours": ours_step_fn(ours, images, targets)[0], "peer": peer_step_fn(peer, images, targets)[0]}
        labels = {"ours": f"sightkit {config.model}", "peer": "transformers DetrForObjectDetection"}
        if config.model == "detr_r18_tiny":
            fns["registered"] = ours_step_fn(build_ours(config, norm="bn"), images, targets)[0]
            labels["registered"] = "sightkit detr_r18_tiny (BatchNorm)"
            labels["ours"] += " (frozen BN)"
        medians = alternating_medians(fns, args.repeats)
        rss = {impl: float("nan") if args.no_rss else rss_peak_mib(name, impl, threads) for impl in fns}
        for impl, (wall, cpu) in medians.items():
            print(f"{name:6} {labels[impl]:34} {wall * 1e3:8.0f} {cpu * 1e3:8.0f} {rss[impl]:9.0f}", flush=True)
        (ours_wall, ours_cpu), (peer_wall, peer_cpu) = medians["ours"], medians["peer"]
        print(
            f"{name:6} {'ours / peer':34} {ours_wall / peer_wall:7.2f}x {ours_cpu / peer_cpu:7.2f}x "
            f"{rss['ours'] / rss['peer']:8.2f}x   (below 1: ours faster / smaller)"
        )
        summary.append((f"{name} train step", threads, ours_wall * 1e3, peer_wall * 1e3))
        entry[name] = {
            labels[impl]: {"wall_ms": round(wall * 1e3, 1), "cpu_ms": round(cpu * 1e3, 1), "peak_mib": rss[impl]}
            for impl, (wall, cpu) in medians.items()
        }
        entry[name]["ratio"] = ratio(peer_wall, ours_wall)
        logits, boxes, loss = value_agreement(config)
        print(
            f"{name:6} agreement (same weights, eval): max |logits diff| {logits:.1e}, "
            f"max |boxes diff| {boxes:.1e}, relative loss diff {loss:.1e}"
        )
    if not args.no_onnx:
        print(f"\ninference, batch 1, eval, median of {args.repeats}")
        print(f"{'model':14} {'eager ms':>9} {'onnxrt ms':>10} {'ort/eager':>10} {'max |diff|':>11} {'export s':>9}")
        for name in args.configs:
            config = CONFIGS[name]
            eager, onnx, difference, export_time = onnx_latency(config, args.repeats, threads)
            print(
                f"{config.model:14} {eager * 1e3:9.1f} {onnx * 1e3:10.1f} {onnx / eager:9.2f}x "
                f"{difference:11.1e} {export_time:9.0f}",
                flush=True,
            )
            entry[f"{name} inference"] = {
                "eager_ms": round(eager * 1e3, 2),
                "onnxruntime_ms": round(onnx * 1e3, 2),
                "max_difference": difference,
            }
