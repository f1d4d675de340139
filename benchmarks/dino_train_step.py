"""DINO's training step against transformers' Deformable DETR at the same size, and our
multi-scale deformable attention against transformers' pure-PyTorch one.

``python -m benchmarks dino_train_step [--repeats 5] [--threads 1 2] [--batch 8] [--size 128]``

Attention (CPU, float32): :func:`sightkit.nn.ms_deform_attn` and transformers'
``MultiScaleDeformableAttention`` (its PyTorch path, the one that runs without a compiled
kernel) on the same inputs, the encoder of ``dino_r18_tiny`` at 128 x 128 pixels (levels 16x16,
8x8, 4x4, 336 queries, 4 heads of 32, 4 points); forward plus backward; largest difference.

Train step (CPU, float32): ``zero_grad``, forward, loss, backward, AdamW step on one batch of
``--batch`` images of ``--size`` pixels with 4 objects each, for

- ``dino_r18_tiny`` as registered (ordinary BatchNorm) and with frozen BatchNorm;
- the peer: transformers' ``DeformableDetrForObjectDetection`` with two-stage query selection
  and iterative box refinement (Deformable DETR's strongest variant, DINO's base), built at the
  same size: transformers' own ResNet-18 cut after stage 3 (read at strides 8 and 16, frozen
  BatchNorm as transformers always builds it, every stage trained), 3 feature levels, d_model
  128, 4 heads, 1+3 layers, FFN 512, 4 points, 30 queries, no dropout, random init, nothing
  downloaded. It has no denoising queries (DINO adds 30 copies of up to 6 targets' worth);
- ``detr_r18_tiny``, the vanilla baseline of the convergence benchmark.

The weights are not shared (the architectures differ: DINO's query positions, denoising and
varifocal loss), so there is no value agreement for the step, only for the attention kernel.
Time: median over ``--repeats`` steps after a warm-up, the models alternating step by step so
that a change in machine load hits all; wall time and process CPU time (steadier on a shared
machine); at each ``--threads`` count (default 1 and 2), figures in
``benchmarks/results/dino_train_step.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary
from sightkit.models import create_model
from sightkit.nn import ms_deform_attn

NUM_CLASSES = 5
OBJECTS = 4


def make_batch(batch: int, size: int, seed: int = 0) -> tuple[Tensor, list[dict[str, Tensor]]]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    targets = []
    for _ in range(batch):
        centres = torch.rand(OBJECTS, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(OBJECTS, 2, generator=generator) * 0.25 + 0.05
        labels = torch.randint(0, NUM_CLASSES, (OBJECTS,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat([centres, sizes], -1)})
    return images, targets


def build_peer(size_of: nn.Module) -> nn.Module:
    """transformers' two-stage Deformable DETR with box refinement at ``dino_r18_tiny``'s size."""
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig
    from transformers.utils import logging

    logging.set_verbosity_error()
    decoder = size_of.decoder_layers
    attention = decoder[0].cross_attn
    backbone = ResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2],
        hidden_sizes=[64, 128, 256],
        embedding_size=64,
        out_features=["stage2", "stage3"],
    )
    config = DeformableDetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_labels=NUM_CLASSES,
        num_feature_levels=size_of.num_feature_levels,
        d_model=size_of.d_model,
        encoder_layers=len(size_of.encoder_layers),
        decoder_layers=len(decoder),
        encoder_attention_heads=attention.n_heads,
        decoder_attention_heads=attention.n_heads,
        encoder_ffn_dim=decoder[0].ffn.linear1.out_features,
        decoder_ffn_dim=decoder[0].ffn.linear1.out_features,
        encoder_n_points=attention.n_points,
        decoder_n_points=attention.n_points,
        num_queries=size_of.num_queries,
        two_stage=True,
        two_stage_num_proposals=size_of.num_queries,
        with_box_refine=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        auxiliary_loss=True,
        disable_custom_kernels=True,
    )
    peer = DeformableDetrForObjectDetection(config)
    # transformers freezes its ResNet's first stages; ours trains every stage.
    peer.model.backbone.requires_grad_(True)
    return peer


def step_function(model: nn.Module, loss: Callable[[], Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    return step


def ours_loss(model: nn.Module, images: Tensor, targets: list[dict[str, Tensor]]) -> Callable[[], Tensor]:
    criterion = model.build_criterion()

    def loss() -> Tensor:
        # DINO's forward takes the targets in training (its denoising queries), DETR's does not
        outputs = model(images, targets=targets) if model.reads_targets else model(images)
        losses = criterion(outputs, targets)
        return sum(weight * losses[name] for name, weight in criterion.weight_dict.items())

    return loss


def peer_loss(model: nn.Module, images: Tensor, targets: list[dict[str, Tensor]]) -> Callable[[], Tensor]:
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    return lambda: model(pixel_values=images, labels=labels).loss


def alternate(functions: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each function, run in turn ``repeats`` times after a warm-up."""
    for function in functions.values():
        function()
    wall: dict[str, list[float]] = {name: [] for name in functions}
    cpu: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            function()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in functions}


def attention_benchmark(repeats: int) -> dict[str, float]:
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    shapes = [(16, 16), (8, 8), (4, 4)]
    batch, heads, dim, points = 8, 4, 32, 4
    tokens = sum(h * w for h, w in shapes)
    generator = torch.Generator().manual_seed(0)
    value = torch.randn(batch, tokens, heads, dim, generator=generator, requires_grad=True)
    locations = torch.rand(batch, tokens, heads, len(shapes), points, 2, generator=generator, requires_grad=True)
    weights = torch.rand(batch, tokens, heads, len(shapes), points, generator=generator).softmax(-1)
    weights.requires_grad_()
    peer = MultiScaleDeformableAttention()
    shape_tensor = torch.tensor(shapes)
    starts = torch.cat([shape_tensor.new_zeros(1), (shape_tensor[:, 0] * shape_tensor[:, 1]).cumsum(0)[:-1]])

    def ours() -> Tensor:
        return ms_deform_attn(value, shapes, locations, weights)

    def theirs() -> Tensor:
        return peer(value, shape_tensor, shapes, starts, locations, weights, 64)

    difference = (ours() - theirs()).abs().max().item()
    times = alternate(
        {"sightkit": lambda: ours().sum().backward(), "transformers": lambda: theirs().sum().backward()}, repeats
    )
    print(f"multi-scale deformable attention, forward + backward, B={batch}, {tokens} queries, levels {shapes}")
    for name, (wall, cpu) in times.items():
        print(f"  {name:<14} {wall * 1e3:8.1f} ms wall {cpu * 1e3:8.1f} ms CPU")
    ratio = times["sightkit"][1] / times["transformers"][1]
    print(f"  sightkit / transformers CPU time: {ratio:.2f}; max |difference| {difference:.1e}")
    return {
        "ours_ms": round(times["sightkit"][0] * 1e3, 2),
        "peer_ms": round(times["transformers"][0] * 1e3, 2),
        "ours_cpu_ms": round(times["sightkit"][1] * 1e3, 2),
        "peer_cpu_ms": round(times["transformers"][1] * 1e3, 2),
        "max_difference": difference,
    }


def train_steps(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Print the train-step table at the current thread count and return its rows."""
    torch.manual_seed(0)
    images, targets = make_batch(args.batch, args.size)
    models = {
        "dino_r18_tiny": create_model("dino_r18_tiny", num_classes=NUM_CLASSES),
        "dino_r18_tiny frozen BN": create_model("dino_r18_tiny", num_classes=NUM_CLASSES, backbone_norm="frozen_bn"),
        "detr_r18_tiny": create_model("detr_r18_tiny", num_classes=NUM_CLASSES),
    }
    peer = build_peer(models["dino_r18_tiny"])
    steps = {name: step_function(model, ours_loss(model, images, targets)) for name, model in models.items()}
    steps["transformers DeformableDetr"] = step_function(peer, peer_loss(peer, images, targets))
    parameters = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    parameters["transformers DeformableDetr"] = sum(p.numel() for p in peer.parameters())
    times = alternate(steps, args.repeats)
    setting = f"batch {args.batch} at {args.size} x {args.size}, {OBJECTS} objects per image, {NUM_CLASSES} classes"
    print(f"\ntrain step, {setting}")
    print(f"{'model':<28} {'params':>8} {'wall ms':>9} {'CPU ms':>9} {'CPU / peer':>11}")
    peer_cpu = times["transformers DeformableDetr"][1]
    for name, (wall, cpu) in times.items():
        print(f"{name:<28} {parameters[name] / 1e6:7.2f}M {wall * 1e3:9.0f} {cpu * 1e3:9.0f} {cpu / peer_cpu:11.2f}")
    ratio = times["dino_r18_tiny"][1] / times["detr_r18_tiny"][1]
    print(f"dino_r18_tiny / detr_r18_tiny CPU time per step: {ratio:.2f}")
    return {
        name: {"wall_ms": round(wall * 1e3, 1), "cpu_ms": round(cpu * 1e3, 1), "parameters": parameters[name]}
        for name, (wall, cpu) in times.items()
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    add_threads_argument(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs")
    results, summary = Results("dino_train_step", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            torch.manual_seed(0)
            entry["attention"] = attention = attention_benchmark(args.repeats)
            entry["train_step"] = step = train_steps(args)
            summary.append(("ms_deform_attn fwd+bwd", threads, attention["ours_ms"], attention["peer_ms"]))
            for name in ("dino_r18_tiny", "dino_r18_tiny frozen BN"):
                peer_ms = step["transformers DeformableDetr"]["wall_ms"]
                summary.append((f"{name} step", threads, step[name]["wall_ms"], peer_ms))
    print_ratio_summary("DINO against transformers' Deformable DETR, wall time", summary)
    results.write()
