"""Multi-scale deformable attention at inference: :func:`sightkit.nn.ms_deform_attn` (on the
CPU without gradients, one weighted gather: ``embedding_bag`` over the four pixels around
every sampling point) against transformers' ``MultiScaleDeformableAttention`` (its PyTorch
path, ``grid_sample`` level by level, the one that runs without a compiled kernel).

``python -m benchmarks deformable_attention [--repeats 7] [--threads 1 2]``

The same random inputs for both (float32; 20% of the sampling locations outside the maps, as
trained models produce near the image edges), forward only under ``torch.inference_mode``, at
the sizes DINO runs:

- ``dino_r18_tiny`` at 128 x 128 pixels, batch 8: the encoder (levels 16x16, 8x8, 4x4; 336
  queries) and a decoder layer (30 queries); 4 heads of 32, 4 points;
- DINO-R50 at 800 x 1216 pixels, batch 1: the encoder (levels 100x152 .. 13x19, 20,196
  queries) and a decoder layer (900 queries); 8 heads of 32, 4 levels, 4 points.

Time: the median over ``--repeats`` calls after a warm-up, ours and the peer alternating, at
each ``--threads`` count; the largest difference between the outputs. Figures in
``benchmarks/results/deformable_attention.json``.
"""

from __future__ import annotations

import argparse
import functools

import torch
from torch import Tensor

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio
from benchmarks._timing import alternate
from sightkit.nn import ms_deform_attn

CASES = {
    "dino_r18_tiny encoder": (8, [(16, 16), (8, 8), (4, 4)], 4, None),
    "dino_r18_tiny decoder": (8, [(16, 16), (8, 8), (4, 4)], 4, 30),
    "DINO-R50 800px encoder": (1, [(100, 152), (50, 76), (25, 38), (13, 19)], 8, None),
    "DINO-R50 800px decoder": (1, [(100, 152), (50, 76), (25, 38), (13, 19)], 8, 900),
}
HEAD_DIM, POINTS = 32, 4


def inputs(batch: int, shapes: list[tuple[int, int]], heads: int, queries: int | None) -> tuple[Tensor, ...]:
    """Value ``[B, N, M, D]``, locations ``[B, Q, M, L, P, 2]`` (a fifth outside [0, 1]) and
    softmax-normalised weights ``[B, Q, M, L, P]``; the encoder's queries are its tokens."""
    generator = torch.Generator().manual_seed(0)
    tokens = sum(h * w for h, w in shapes)
    queries = queries or tokens
    value = torch.randn(batch, tokens, heads, HEAD_DIM, generator=generator)
    locations = torch.rand(batch, queries, heads, len(shapes), POINTS, 2, generator=generator) * 1.25 - 0.125
    weights = torch.randn(batch, queries, heads, len(shapes) * POINTS, generator=generator).softmax(-1)
    return value, locations, weights.view(batch, queries, heads, len(shapes), POINTS)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks deformable_attention", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeats", type=int, default=7)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    peer = MultiScaleDeformableAttention()
    results, summary = Results("deformable_attention", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            print(f"{'':24} {'ours ms':>9} {'peer ms':>9} {'ratio':>7}  max |difference|")
            for name, (batch, shapes, heads, queries) in CASES.items():
                value, locations, weights = inputs(batch, shapes, heads, queries)
                shape_tensor = torch.tensor(shapes)
                starts = torch.cat([shape_tensor.new_zeros(1), shape_tensor.prod(1).cumsum(0)[:-1]])
                ours = functools.partial(ms_deform_attn, value, shapes, locations, weights)
                theirs = functools.partial(peer, value, shape_tensor, shapes, starts, locations, weights, 64)
                with torch.inference_mode():
                    difference = (ours() - theirs()).abs().max().item()
                    # the large encoder takes about a second per call: fewer repeats keep the run short
                    times = alternate({"ours": ours, "peer": theirs}, args.repeats if batch > 1 else 3)
                ours_ms, peer_ms = times["ours"] * 1e3, times["peer"] * 1e3
                print(f"{name:<24} {ours_ms:9.2f} {peer_ms:9.2f} {peer_ms / ours_ms:6.2f}x  {difference:.1e}")
                entry[name] = {
                    "ours_ms": round(ours_ms, 3),
                    "peer_ms": round(peer_ms, 3),
                    "ratio": ratio(peer_ms, ours_ms),
                    "max_difference": difference,
                }
                summary.append((name, threads, ours_ms, peer_ms))
    print_ratio_summary("multi-scale deformable attention, inference", summary)
    results.write()
