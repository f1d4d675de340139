"""Margin-softmax classifier, forward + backward, at 100k identities: sightkit's PartialFC
against a direct transcription of insightface's ``CombinedMarginLoss``.

``python -m benchmarks margin_loss [--classes 100000] [--batch 128] [--dim 512] [--repeats 3] [--threads 1 2]``

At each ``--threads`` count (default 1 and 2); figures in ``benchmarks/results/margin_loss.json``.

One step, both sides: normalise the ``[B, D]`` embeddings and the ``[C, D]`` class centres,
cosines ``[B, C]``, the margin on the target logits, scale, softmax cross-entropy (mean),
backward to the embeddings and the centres. The peer is insightface's arcface_torch code
(``losses.CombinedMarginLoss`` followed by cross-entropy, as its ``PartialFC_V2`` runs it on
one process), transcribed below. Ours is :class:`sightkit.losses.PartialFC` at sample rate 1
(the same computation, with the sharded cross-entropy) and at 0.1 (Partial FC's sampling).

Agreement: the loss, and ``max |ours - peer| / max |peer|`` of the gradients. CosFace's
gradients must agree. ArcFace's do not by design: insightface applies the angular margin
under ``torch.no_grad`` (its gradient is that of the plain cosine, a straight-through
estimate), sightkit differentiates ``cos(θ + m)``.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio
from benchmarks._timing import median_time
from sightkit.losses import PartialFC


class InsightfaceCombinedMarginLoss(torch.nn.Module):
    """insightface recognition/arcface_torch/losses.py ``CombinedMarginLoss`` (ArcFace and CosFace
    branches), transcribed without the inter-class filtering (off by default there)."""

    def __init__(self, s: float, m1: float, m2: float, m3: float) -> None:
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        index_positive = torch.where(labels != -1)[0]
        target_logit = logits[index_positive, labels[index_positive].view(-1)]
        if self.m1 == 1.0 and self.m3 == 0.0:
            with torch.no_grad():
                target_logit.arccos_()
                logits.arccos_()
                final_target_logit = target_logit + self.m2
                logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
                logits.cos_()
            logits = logits * self.s
        elif self.m3 > 0:
            final_target_logit = target_logit - self.m3
            logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
            logits = logits * self.s
        else:
            raise ValueError("unsupported margins")
        return logits


def peer_step(embeddings: Tensor, centres: Tensor, labels: Tensor, margin: InsightfaceCombinedMarginLoss) -> Tensor:
    """insightface's PartialFC_V2 on one process at sample rate 1: linear on normalised inputs,
    clamp, margin, cross-entropy."""
    logits = F.linear(F.normalize(embeddings), F.normalize(centres)).clamp(-1, 1)
    loss = F.cross_entropy(margin(logits, labels), labels)
    loss.backward()
    return loss


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks margin_loss", description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    print(f"B={args.batch} D={args.dim} C={args.classes}, CPU count {os.cpu_count()}, median of {args.repeats}")
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(args.batch, args.dim, generator=g)
    centres = torch.randn(args.classes, args.dim, generator=g) * 0.01
    labels = torch.randint(0, args.classes, (args.batch,), generator=g)
    results, summary = Results("margin_loss", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            for name, (m2, m3) in {"arcface": (0.5, 0.0), "cosface": (0.0, 0.4)}.items():
                margin = InsightfaceCombinedMarginLoss(64.0, 1.0, m2, m3)
                peer_e, peer_w = embeddings.clone().requires_grad_(), centres.clone().requires_grad_()
                ours_e = embeddings.clone().requires_grad_()
                head = PartialFC(args.dim, args.classes, 1.0, 64.0, 1.0, m2, m3)
                sampled = PartialFC(
                    args.dim, args.classes, 0.1, 64.0, 1.0, m2, m3, generator=torch.Generator().manual_seed(1)
                )
                with torch.no_grad():
                    head.weight.copy_(centres)
                    sampled.weight.copy_(centres)

                def run_peer(peer_e: Tensor = peer_e, peer_w: Tensor = peer_w, margin=margin) -> Tensor:
                    peer_e.grad = peer_w.grad = None
                    return peer_step(peer_e, peer_w, labels, margin)

                def run_ours(module: PartialFC, ours_e: Tensor = ours_e) -> Tensor:
                    ours_e.grad = module.weight.grad = None
                    loss = module(ours_e, labels)
                    loss.backward()
                    return loss

                peer_time = median_time(run_peer, repeats=args.repeats)
                ours_time = median_time(lambda head=head: run_ours(head), repeats=args.repeats)
                sampled_time = median_time(lambda sampled=sampled: run_ours(sampled), repeats=args.repeats)
                peer_loss, ours_loss = run_peer(), run_ours(head)

                def gap(ours: Tensor, peer: Tensor) -> float:
                    return float((ours - peer).abs().max() / peer.abs().max())

                print(
                    f"{name:8s} peer (insightface) {peer_time * 1e3:8.1f} ms   ours {ours_time * 1e3:8.1f} ms   "
                    f"ratio ours/peer {ours_time / peer_time:5.2f}   "
                    f"ours at sample_rate 0.1 {sampled_time * 1e3:7.1f} ms "
                    f"({sampled_time / peer_time:4.2f} x peer)"
                )
                print(
                    f"{'':8s} loss peer {peer_loss.item():.6f} ours {ours_loss.item():.6f} (|diff| "
                    f"{abs(peer_loss.item() - ours_loss.item()):.1e});  gradient gap: embeddings "
                    f"{gap(ours_e.grad, peer_e.grad):.1e}, centres {gap(head.weight.grad, peer_w.grad):.1e}"
                    + ("  (by design: insightface's ArcFace gradient is straight-through)" if name == "arcface" else "")
                )
                summary.append((name, threads, ours_time * 1e3, peer_time * 1e3))
                summary.append((f"{name} sample_rate 0.1", threads, sampled_time * 1e3, peer_time * 1e3))
                entry[name] = {
                    "peer_ms": round(peer_time * 1e3, 2),
                    "ours_ms": round(ours_time * 1e3, 2),
                    "ours_sample_rate_0.1_ms": round(sampled_time * 1e3, 2),
                    "ratio": ratio(peer_time, ours_time),
                    "loss_difference": abs(peer_loss.item() - ours_loss.item()),
                }
    print_ratio_summary("margin-softmax classifier, forward + backward", sorted(summary, key=lambda row: row[0]))
    results.write()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
