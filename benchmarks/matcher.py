"""sightkit's HungarianMatcher against transformers' DETR matcher, on one DETR-sized batch.

Both solve the same per-image assignment problems with scipy; they differ in the cost they
build first. transformers (like DETR) computes one all-pairs ``[B*Q, sum T]`` matrix and
keeps only its diagonal blocks; sightkit computes the ``[Q, T_b]`` blocks alone. A third row
runs DETR's all-pairs recipe on sightkit's own box ops, to separate that algorithmic saving
from implementation differences. The total matching cost of every image is checked against
one float64 cost definition (torchvision's GIoU); assignments may differ only on ties.

    python -m benchmarks matcher [--batch 16] [--queries 300] [--classes 91] [--max-targets 50]
                                 [--repeats 20] [--threads 1 2] [--device cpu] [--seed 0]

The figures, at each thread count with the load average, go to ``benchmarks/results/matcher.json``.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.optimize
import torch
import torchvision

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio
from benchmarks._timing import median_time
from sightkit.ops import HungarianMatcher, box_convert, generalized_box_iou

WEIGHTS = (1.0, 5.0, 2.0)  # DETR's class, L1 and GIoU weights, used by all three matchers


def make_batch(
    batch: int, queries: int, classes: int, max_targets: int, seed: int, device: str
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """DETR-shaped random outputs (``classes + 1`` logits: the last is no-object) and targets."""
    generator = torch.Generator().manual_seed(seed)

    def cxcywh(*shape: int) -> torch.Tensor:
        centres = torch.rand(*shape, 2, generator=generator) * 0.8 + 0.1
        sizes = torch.rand(*shape, 2, generator=generator) * 0.2 + 0.01
        return torch.cat([centres, sizes], dim=-1)

    counts = torch.randint(1, max_targets + 1, (batch,), generator=generator).tolist()
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes + 1, generator=generator).to(device),
        "pred_boxes": cxcywh(batch, queries).to(device),
    }
    targets = [
        {"labels": torch.randint(0, classes, (n,), generator=generator).to(device), "boxes": cxcywh(n).to(device)}
        for n in counts
    ]
    return outputs, targets


@torch.no_grad()
def detr_all_pairs(
    outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """DETR's matcher (facebookresearch/detr models/matcher.py) written on sightkit's box ops."""
    batch, queries = outputs["pred_logits"].shape[:2]
    prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
    pred = outputs["pred_boxes"].flatten(0, 1)
    labels = torch.cat([t["labels"] for t in targets])
    boxes = torch.cat([t["boxes"] for t in targets])
    giou = generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(boxes, "cxcywh", "xyxy"))
    cost = -WEIGHTS[0] * prob[:, labels] + WEIGHTS[1] * torch.cdist(pred, boxes, p=1) - WEIGHTS[2] * giou
    cost = cost.view(batch, queries, -1).cpu()
    sizes = [len(t["boxes"]) for t in targets]
    return [scipy.optimize.linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]


def reference_costs(outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> list[np.ndarray]:
    """The one cost definition every assignment is scored with: float64, torchvision's GIoU."""
    costs = []
    for b, target in enumerate(targets):
        logits = outputs["pred_logits"][b].double().cpu()
        pred = outputs["pred_boxes"][b].double().cpu()
        boxes = target["boxes"].double().cpu()
        giou = torchvision.ops.generalized_box_iou(
            torchvision.ops.box_convert(pred, "cxcywh", "xyxy"), torchvision.ops.box_convert(boxes, "cxcywh", "xyxy")
        )
        l1 = (pred[:, None] - boxes[None]).abs().sum(-1)
        cost = -WEIGHTS[0] * logits.softmax(-1)[:, target["labels"].cpu()] + WEIGHTS[1] * l1 - WEIGHTS[2] * giou
        costs.append(cost.numpy())
    return costs


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks matcher", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--classes", type=int, default=91, help="object classes; the logits have one more")
    parser.add_argument("--max-targets", type=int, default=50, help="targets per image: uniform in [1, this]")
    parser.add_argument("--repeats", type=int, default=20)
    add_threads_argument(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    outputs, targets = make_batch(args.batch, args.queries, args.classes, args.max_targets, args.seed, args.device)
    sizes = [len(t["labels"]) for t in targets]
    ours = HungarianMatcher(*WEIGHTS)
    peers = {"DETR all-pairs on sightkit box ops": lambda: detr_all_pairs(outputs, targets)}
    try:
        from transformers.loss.loss_for_object_detection import HungarianMatcher as TransformersMatcher
    except ImportError as error:
        print(f"transformers' matcher is not importable ({error}); comparing with the all-pairs recipe only")
    else:
        theirs = TransformersMatcher(class_cost=WEIGHTS[0], bbox_cost=WEIGHTS[1], giou_cost=WEIGHTS[2])
        hf_outputs = {"logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}
        hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        peers = {"transformers HungarianMatcher": lambda: theirs(hf_outputs, hf_targets), **peers}

    costs = reference_costs(outputs, targets)
    print(
        f"Hungarian matching: B={args.batch} Q={args.queries} C={args.classes + 1} logits, "
        f"targets per image 1-{args.max_targets} (sum {sum(sizes)}), seed {args.seed}, "
        f"device {args.device}, median of {args.repeats}"
    )
    block_entries = args.queries * sum(sizes)
    print(f"cost entries: per-image blocks {block_entries:,}, all pairs {block_entries * args.batch:,} ({args.batch}x)")

    def solve_only() -> None:
        for cost in costs:
            scipy.optimize.linear_sum_assignment(cost)

    optimum = [cost[scipy.optimize.linear_sum_assignment(cost)].sum() for cost in costs]
    matchers = {"sightkit HungarianMatcher": lambda: ours(outputs, targets), **peers}
    results, summary = Results("matcher", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            solve_time = median_time(solve_only, repeats=args.repeats)
            entry["scipy_ms"] = round(solve_time * 1e3, 3)
            ours_time, ours_pairs = 0.0, []
            for name, run in matchers.items():
                seconds = median_time(run, repeats=args.repeats)
                pairs = [(torch.as_tensor(p).cpu().numpy(), torch.as_tensor(t).cpu().numpy()) for p, t in run()]
                if not ours_pairs:
                    ours_time, ours_pairs = seconds, pairs
                    print(f"  {name:38s} {seconds * 1e3:9.2f} ms   (scipy's share: {solve_time * 1e3:.2f} ms)")
                else:
                    print(f"  {name:38s} {seconds * 1e3:9.2f} ms   sightkit is {seconds / ours_time:.1f}x faster")
                    summary.append((f"vs {name}", threads, ours_time * 1e3, seconds * 1e3))
                totals = [cost[p, t].sum() for cost, (p, t) in zip(costs, pairs, strict=True)]
                gap = max(abs(total - best) for total, best in zip(totals, optimum, strict=True))
                same = sum(
                    np.array_equal(p, q) and np.array_equal(t, u)
                    for (p, t), (q, u) in zip(pairs, ours_pairs, strict=True)
                )
                print(
                    f"      total cost - float64 optimum: max |gap| {gap:.1e} over {len(costs)} images; "
                    f"assignment identical to sightkit's on {same}/{len(costs)}"
                )
                entry[name] = {
                    "ms": round(seconds * 1e3, 3),
                    "ratio": ratio(seconds, ours_time),
                    "max_gap_to_optimum": float(gap),
                    "same_assignment": f"{same}/{len(costs)}",
                }
    print_ratio_summary("HungarianMatcher, sightkit against each peer", summary)
    results.write()
