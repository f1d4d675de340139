"""Face identification against a large gallery: one query face against G enrolled identities.

``old`` is the search the server used before: it mapped every enrolled embedding to its
identity with ``identities.index(name)`` (a linear scan per embedding, so quadratic in the
gallery size) on every request, then one float32 matrix product. ``new`` is
:meth:`sightkit.serve.gallery.Entries.search` with ``match="best"`` (the same best-of-images
score): the identity index is built once when the gallery is read, one float16 product scores
every embedding (half the bytes to stream, which bounds the search on a CPU), and the few
identities near the top are rescored in float32. Both answers are checked to name the same
identities with scores within 2e-6. ``template`` times ``match="template"`` (one float32
product with each identity's pooled template), the server's default.

    python -m benchmarks gallery_search [--sizes 1000 10000 100000] [--dim 512] [--per-identity 1]
                                        [--threads 1 2] [--repeats 20] [--old-max 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks._conditions import Results, add_threads_argument, ratio
from benchmarks._timing import median_time
from sightkit.serve.gallery import Entries


def old_search(names: list[str], vectors: Tensor, queries: Tensor, top_k: int) -> list[list[tuple[str, float]]]:
    """The server's search before the fix (``SQLiteGallery.identify`` at commit 99c88f6)."""
    identities = sorted(set(names))
    owner = torch.tensor([identities.index(name) for name in names])
    similarity = queries @ vectors.T
    best = similarity.new_full((similarity.shape[0], len(identities)), -math.inf)
    best.scatter_reduce_(1, owner.expand_as(similarity), similarity, reduce="amax")
    scores, order = best.topk(min(top_k, len(identities)), dim=1)
    return [
        [(identities[i], round(float(s), 6)) for s, i in zip(row_scores, row_order, strict=True)]
        for row_scores, row_order in zip(scores.tolist(), order.tolist(), strict=True)
    ]


def same_answer(got: list[list[tuple[str, float]]], want: list[list[tuple[str, float]]]) -> bool:
    return all(
        [n for n, _ in g] == [n for n, _ in w] and all(abs(a - b) <= 2e-6 for (_, a), (_, b) in zip(g, w, strict=True))
        for g, w in zip(got, want, strict=True)
    )


def measure(size: int, args: argparse.Namespace, generator: torch.Generator, results: Results) -> None:
    """Print one row per thread count for a gallery of ``size`` identities and record it."""
    names = [f"person {i:07d}" for i in range(size) for _ in range(args.per_identity)]
    vectors = F.normalize(torch.randn(len(names), args.dim, generator=generator), dim=1)
    query = F.normalize(vectors[:1] + 0.5 * torch.randn(1, args.dim, generator=generator), dim=1)
    entries = Entries.of(names, vectors)
    for threads in args.threads:
        with results.at(threads, identities=size) as entry:
            new = median_time(lambda: entries.search(query, args.top_k, match="best"), repeats=args.repeats, warmup=2)
            template = median_time(lambda: entries.search(query, args.top_k, match="template"), repeats=args.repeats)
            entry.update(new_ms=round(new * 1e3, 3), template_ms=round(template * 1e3, 3))
            row = f"{size:>10} {threads:>7} {{old}} {new * 1e3:>8.2f} {{ratio}} {template * 1e3:>11.2f}"
            if size > args.old_max:
                print(row.format(old=f"{'skipped':>9}", ratio=f"{'':>8}") + "  (old: quadratic, --old-max)")
                continue
            old = median_time(lambda: old_search(names, vectors, query, args.top_k), repeats=min(args.repeats, 3))
            new_answer = entries.search(query, args.top_k, match="best")
            same = same_answer(new_answer, old_search(names, vectors, query, args.top_k))
            entry.update(old_ms=round(old * 1e3, 3), ratio=ratio(old, new), same_answer=same)
            print(row.format(old=f"{old * 1e3:>9.1f}", ratio=f"{old / new:>7.0f}x") + f"  {same}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gallery_search", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000], help="identities")
    parser.add_argument("--dim", type=int, default=512, help="embedding size (ArcFace: 512)")
    parser.add_argument("--per-identity", type=int, default=1, help="embeddings enrolled per identity")
    parser.add_argument("--top-k", type=int, default=5)
    add_threads_argument(parser)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--old-max", type=int, default=20_000, help="largest gallery the quadratic old search runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"one query against G identities x {args.per_identity} embeddings, dim {args.dim}, top {args.top_k}")
    print(f"median of {args.repeats} (old: of at most 3); {os.cpu_count()} cores")
    print(f"{'identities':>10} {'threads':>7} {'old ms':>9} {'new ms':>8} {'old/new':>8} {'template ms':>11}  same")
    results = Results("gallery_search", args)
    generator = torch.Generator().manual_seed(args.seed)
    for size in args.sizes:
        measure(size, args, generator, results)
    results.write()


if __name__ == "__main__":
    main()
