"""Verification metrics of 10^6 pairs: sightkit.eval.face against scikit-learn's ``roc_curve``
and insightface's k-fold accuracy.

``python -m benchmarks face_verification [--pairs 1000000] [--repeats 3] [--threads 1 2]``

At each ``--threads`` count (default 1 and 2); figures in ``benchmarks/results/face_verification.json``.

Scores of same-person pairs ~ N(0.5, 0.15), of impostors ~ N(0.1, 0.15), 10% same-person.

- ROC and TAR at FAR 1e-1 ... 1e-5: ours (:func:`roc_curve`, :func:`tar_at_far`) against
  ``sklearn.metrics.roc_curve`` with TAR read at the last ROC point whose FAR is within the
  target (insightface's IJB evaluation does this).
- 10-fold accuracy: ours (:func:`kfold_accuracy`, the exact best threshold by sorting)
  against a transcription of insightface's ``calculate_roc`` accuracy part (a grid of 400
  thresholds on the distance ``2 - 2 cos``, scikit-learn's ``KFold``).

Agreement: the largest TAR difference, and the two accuracies (the grid can only be as good
as its step, so insightface's may be slightly lower).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary
from benchmarks._timing import median_time
from sightkit.eval import kfold_accuracy, roc_curve, tar_at_far

FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


def sklearn_tar_at_far(scores: np.ndarray, labels: np.ndarray) -> dict[float, float]:
    from sklearn.metrics import roc_curve as sk_roc_curve

    fpr, tpr, _ = sk_roc_curve(labels, scores)
    return {far: float(tpr[np.searchsorted(fpr, far, side="right") - 1]) for far in FARS}


def insightface_kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: int = 10) -> float:
    """insightface recognition/arcface_torch/eval/verification.py ``calculate_roc`` (accuracy part):
    distances, 400 thresholds, best train-fold threshold applied to the test fold."""
    from sklearn.model_selection import KFold

    distances = 2 - 2 * scores  # squared L2 distance of unit vectors
    thresholds = np.arange(0, 4, 0.01)
    accuracy = np.zeros(folds)
    for fold, (train, test) in enumerate(KFold(n_splits=folds, shuffle=False).split(np.arange(len(scores)))):
        train_accuracy = np.array([np.mean((distances[train] < t) == labels[train]) for t in thresholds])
        best = thresholds[np.argmax(train_accuracy)]
        accuracy[fold] = np.mean((distances[test] < best) == labels[test])
    return float(accuracy.mean())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks face_verification", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(args.pairs, generator=g) < 0.1
    scores = torch.where(labels, 0.5, 0.1) + 0.15 * torch.randn(args.pairs, generator=g, dtype=torch.float64)
    scores_np, labels_np = scores.numpy(), labels.numpy()
    print(f"{args.pairs} pairs ({int(labels.sum())} same)")

    results, summary = Results("face_verification", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            ours_roc = median_time(lambda: (roc_curve(scores, labels), tar_at_far(scores, labels, FARS)), args.repeats)
            peer_roc = median_time(lambda: sklearn_tar_at_far(scores_np, labels_np), args.repeats)
            ours_tar = {far: tar for far, (tar, _) in tar_at_far(scores, labels, FARS).items()}
            peer_tar = sklearn_tar_at_far(scores_np, labels_np)
            gap = max(abs(ours_tar[f] - peer_tar[f]) for f in FARS)
            print(
                f"ROC + TAR@FAR  ours {ours_roc * 1e3:8.1f} ms   scikit-learn {peer_roc * 1e3:8.1f} ms   "
                f"ratio ours/peer {ours_roc / peer_roc:5.2f}   max |TAR difference| {gap:.1e}"
            )
            print("               " + "  ".join(f"TAR@{f:g} {ours_tar[f]:.4f}" for f in FARS))
            summary.append(("ROC + TAR@FAR vs scikit-learn", threads, ours_roc * 1e3, peer_roc * 1e3))
            entry["roc"] = {
                "ours_ms": round(ours_roc * 1e3, 1),
                "peer_ms": round(peer_roc * 1e3, 1),
                "max_tar_gap": gap,
            }

            ours_kfold = median_time(lambda: kfold_accuracy(scores, labels), args.repeats)
            peer_kfold = median_time(lambda: insightface_kfold_accuracy(scores_np, labels_np), 1, warmup=0)
            ours_accuracy = kfold_accuracy(scores, labels)["accuracy"]
            peer_accuracy = insightface_kfold_accuracy(scores_np, labels_np)
            print(
                f"10-fold acc.   ours {ours_kfold * 1e3:8.1f} ms   insightface {peer_kfold * 1e3:8.1f} ms   "
                f"ratio ours/peer {ours_kfold / peer_kfold:5.3f}   accuracy ours {ours_accuracy:.5f} "
                f"insightface {peer_accuracy:.5f}"
            )

            summary.append(("10-fold accuracy vs insightface", threads, ours_kfold * 1e3, peer_kfold * 1e3))
            entry["kfold"] = {"ours_ms": round(ours_kfold * 1e3, 1), "peer_ms": round(peer_kfold * 1e3, 1)}
    print_ratio_summary("face verification metrics", sorted(summary, key=lambda row: row[0]))
    results.write()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
