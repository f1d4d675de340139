"""The upsampling family side by side: cost, checkerboard at initialisation, and what each
mode gives a segmentation network after the same small training budget.

``python -m benchmarks upsample [--channels 64] [--size 64] [--batch 8] [--repeats 5]
[--threads 1 2] [--steps 150] [--lr 1e-3] [--images 96] [--skip-train] [--parts 123]``

1. **Block** (``sightkit.nn.Upsample``, ``C -> C`` channels, ×2, ``[B, C, S, S]`` float32 on
   the CPU): parameters, forward + backward time (median of ``--repeats``), and the same
   for the peer, the PyTorch built-in that computes the same function with the same weights:
   ``F.interpolate`` (nearest, bilinear, bicubic), ``Conv2d`` + ``PixelShuffle``,
   ``ConvTranspose2d`` (zero padding, so it differs from ours on the one-pixel border; the
   agreement column compares the interior), ``F.max_unpool2d``, and for CARAFE, which
   PyTorch lacks, the authors' naive formulation (``unfold`` the neighbourhoods, repeat them
   ``r x r`` times, weight and sum). ``agree`` is ``max |ours - peer| / max |peer|``.
2. **Checkerboard at initialisation**: the fraction of the output's spectral energy (DC
   excluded) on the Nyquist row and column of its 2-D DFT (period-2 patterns, the
   checkerboard of Odena et al., "Deconvolution and Checkerboard Artifacts", Distill 2016),
   for a smooth input (random noise upsampled ×4 bicubically), averaged over channels. An
   ``r x r``-constant or bilinear output has none; deconvolution with PyTorch's default
   initialisation and pixel shuffle without ICNR have a lot; unpooling is sparse by design.
3. **Model and budget**: ``unet_r18_tiny`` with each mode: parameters, forward + backward of
   a ``[B, 3, 2S, 2S]`` batch, and validation mIoU after ``--steps`` optimiser steps of
   ``sightkit train segment`` (batch 8, crops of 64, AdamW at ``--lr``, cosine) on synthetic shapes
   (``--images``, 20% for validation, seed 0, the same for every mode). One seed: differences
   of a few points are within run-to-run noise.

Table 1 is measured at each ``--threads`` count (default 1 and 2), tables 2 and 3 at the
first; table 1's figures go to ``benchmarks/results/upsample.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary
from benchmarks._timing import median_time
from sightkit.nn import Upsample
from sightkit.nn.upsample import UPSAMPLE_MODES


def naive_carafe(block: Upsample, x: Tensor) -> Tensor:
    """CARAFE as its authors' reference formulation writes it (unfold, repeat, weight, sum)."""
    carafe = block.body
    r, k = carafe.scale_factor, carafe.kernel_up
    batch, channels, height, width = x.shape
    kernels = F.pixel_shuffle(carafe.encoder(carafe.compressor(x)), r).softmax(dim=1)
    patches = F.unfold(x, k, padding=k // 2).view(batch, channels * k * k, height, width)
    patches = F.interpolate(patches, scale_factor=r, mode="nearest").view(batch, channels, k * k, r * height, r * width)
    return (patches * kernels[:, None]).sum(dim=2)


def peer_of(block: Upsample) -> tuple[str, Callable[..., Tensor], bool]:
    """``(description, peer(x, indices), border_differs)`` for the block's mode, with its weights."""
    mode, r = block.mode, block.scale_factor
    if mode in ("nearest", "bilinear", "bicubic"):
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        return "F.interpolate", lambda x, indices: F.interpolate(x, scale_factor=r, mode=mode, **kwargs), False
    if mode == "pixelshuffle":
        peer = nn.Sequential(block.body.conv, nn.PixelShuffle(r))
        return "Conv2d+PixelShuffle", lambda x, indices: peer(x), False
    if mode == "deconv":
        conv = block.body.conv
        # The textbook layer: zero padding that gives exactly r x the size.
        plain = nn.ConvTranspose2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, r, padding=(conv.kernel_size[0] - r) // 2
        )
        plain.load_state_dict(conv.state_dict())
        return "ConvTranspose2d", lambda x, indices: plain(x), True
    if mode == "unpool":
        return "F.max_unpool2d", lambda x, indices: F.max_unpool2d(x, indices, r, r), False
    return "naive unfold CARAFE", lambda x, indices: naive_carafe(block, x), False


def fwd_bwd(fn: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        fn(x).sum().backward()

    return step


def checkerboard_energy(y: Tensor) -> float:
    """Fraction of the non-DC spectral energy of ``y`` [B, C, H, W] on its Nyquist row and column."""
    spectrum = torch.fft.fft2(y.double()).abs().square()
    height, width = y.shape[-2:]
    total = spectrum.sum(dim=(-2, -1)) - spectrum[..., 0, 0]
    nyquist = spectrum[..., height // 2, :].sum(-1) + spectrum[..., :, width // 2].sum(-1)
    nyquist = nyquist - spectrum[..., height // 2, width // 2]
    return float((nyquist / total.clamp_min(1e-30)).mean())


def smooth_input(batch: int, channels: int, size: int, seed: int = 0) -> Tensor:
    noise = torch.randn(batch, channels, size // 4, size // 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)


def pooled_input(batch: int, channels: int, size: int) -> tuple[Tensor, Tensor]:
    features = torch.randn(batch, channels, 2 * size, 2 * size, generator=torch.Generator().manual_seed(1))
    return F.max_pool2d(features, 2, 2, return_indices=True)


def block_table(args: argparse.Namespace) -> dict[str, dict[str, float | str]]:
    """Print table 1 at the current thread count and return its rows by mode."""
    rows: dict[str, dict[str, float | str]] = {}
    print(
        f"\n1. Upsample block, {args.channels} -> {args.channels} channels, x2, input "
        f"[{args.batch}, {args.channels}, {args.size}, {args.size}] float32, forward + backward, "
        f"median of {args.repeats} (ms)"
    )
    header = f"{'mode':<13}{'params':>9}{'ours':>9}{'peer':>9}{'ours/peer':>11}  {'agree':>8}  peer"
    print(header)
    print("-" * (len(header) + 22))
    for mode in UPSAMPLE_MODES:
        torch.manual_seed(0)
        block = Upsample(args.channels, scale_factor=2, mode=mode)
        x, indices = pooled_input(args.batch, args.channels, args.size)
        x.requires_grad_(True)
        name, peer, border = peer_of(block)
        ours = partial(block, indices=indices if mode == "unpool" else None)
        theirs = partial(peer, indices=indices)
        ours_ms = 1e3 * median_time(fwd_bwd(ours, x), args.repeats)
        peer_ms = 1e3 * median_time(fwd_bwd(theirs, x), args.repeats)
        with torch.no_grad():
            ours_y, peer_y = ours(x), theirs(x)
            if border:
                ours_y, peer_y = ours_y[..., 2:-2, 2:-2], peer_y[..., 2:-2, 2:-2]
            agree = float((ours_y - peer_y).abs().max() / peer_y.abs().max())
        params = sum(p.numel() for p in block.parameters())
        note = " (interior)" if border else ""
        ratio = ours_ms / peer_ms
        print(f"{mode:<13}{params:>9}{ours_ms:>9.2f}{peer_ms:>9.2f}{ratio:>11.2f}  {agree:>8.1e}  {name}{note}")
        rows[mode] = {"peer": name, "ours_ms": round(ours_ms, 3), "peer_ms": round(peer_ms, 3), "agreement": agree}
    return rows


def checkerboard_table(args: argparse.Namespace) -> None:
    print(
        f"\n2. Checkerboard at initialisation: share of output spectral energy at the Nyquist frequency "
        f"(DC excluded), smooth input [{args.batch}, {args.channels}, {args.size}, {args.size}]"
    )
    rows = [(mode, None) for mode in UPSAMPLE_MODES if mode not in ("deconv", "pixelshuffle")]
    rows += [("deconv", "bilinear"), ("deconv", "default"), ("pixelshuffle", "icnr"), ("pixelshuffle", "default")]
    x = smooth_input(args.batch, args.channels, args.size)
    print(f"{'mode':<13}{'init':<10}{'Nyquist share':>14}")
    print("-" * 37)
    for mode, init in rows:
        torch.manual_seed(0)
        block = Upsample(args.channels, scale_factor=2, mode=mode, init=init)
        with torch.no_grad():
            if mode == "unpool":
                # Indices of the smooth signal's own 2x2 maxima one level up, as a decoder would have them.
                bigger = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
                pooled, indices = F.max_pool2d(bigger, 2, 2, return_indices=True)
                y = block(pooled, indices=indices)
            else:
                y = block(x)
        print(f"{mode:<13}{init or '-':<10}{checkerboard_energy(y):>14.2e}")


def model_table(args: argparse.Namespace) -> None:
    from sightkit.data import synthesize_shapes
    from sightkit.models import create_model
    from sightkit.tasks.segment import SegmentConfig, train

    side = 2 * args.size
    print(
        f"\n3. unet_r18_tiny with each mode: forward + backward of [{args.batch}, 3, {side}, {side}] (median of "
        f"{args.repeats}, ms) and validation mIoU after {args.steps} steps on synthetic shapes "
        f"({args.images} images, 20% validation)"
    )
    header = f"{'mode':<13}{'params':>11}{'fwd+bwd':>10}{'train s':>9}{'mIoU':>8}{'pixel acc':>11}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "shapes"
        if not args.skip_train:
            synthesize_shapes(out=str(data), images=args.images, size=96, val_fraction=0.2, progress=False)
        images = torch.randn(args.batch, 3, side, side)
        for mode in UPSAMPLE_MODES:
            torch.manual_seed(0)
            model = create_model("unet_r18_tiny", num_classes=6, upsample=mode)
            params = sum(p.numel() for p in model.parameters())
            step_ms = 1e3 * median_time(lambda m=model: m(images).square().mean().backward(), args.repeats)
            if args.skip_train:
                print(f"{mode:<13}{params:>11}{step_ms:>10.1f}")
                continue
            config = SegmentConfig(
                model="unet_r18_tiny", upsample=mode, data=str(data), out=str(Path(folder) / mode), imgsz=64,
                epochs=0, steps=args.steps, eval_every=args.steps, batch=8, lr=args.lr, progress=False, plot=False,
                seed=0,
            )  # fmt: skip
            start = time.perf_counter()
            metrics = train(config)
            seconds = time.perf_counter() - start
            print(
                f"{mode:<13}{params:>11}{step_ms:>10.1f}{seconds:>9.1f}{metrics['mIoU']:>8.3f}"
                f"{metrics['pixel_accuracy']:>11.3f}",
                flush=True,
            )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks upsample", description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="input side of the block (the model gets 2x)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    add_threads_argument(parser)
    parser.add_argument("--steps", type=int, default=150, help="training steps per mode")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the training runs")
    parser.add_argument("--images", type=int, default=96, help="synthetic shapes images (20%% validation)")
    parser.add_argument("--skip-train", action="store_true", help="leave out the mIoU column")
    parser.add_argument("--parts", default="123", help="which tables to print, e.g. 3 for the models only")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    results, summary = Results("upsample", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            if "1" in args.parts:
                entry["block"] = block_table(args)
                summary += [(mode, threads, row["ours_ms"], row["peer_ms"]) for mode, row in entry["block"].items()]
            # the checkerboard does not depend on threads, and the training runs are too long to repeat
            if threads == args.threads[0]:
                for part, table in (("2", checkerboard_table), ("3", model_table)):
                    if part in args.parts:
                        table(args)
    if summary:
        print_ratio_summary("Upsample block, forward + backward (peer: the PyTorch built-in)", sorted(summary))
    results.write()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
