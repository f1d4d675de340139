"""Face verification (1:1) and identification (1:N) metrics.

Verification compares pairs of embeddings by a similarity score (cosine of normalised
embeddings) and accepts a pair as the same person when the score passes a threshold:

- :func:`roc_curve`: true accept rate (TAR) against false accept rate (FAR) at every threshold.
- :func:`tar_at_far`: TAR at the threshold that keeps the FAR at or below each target
  (1e-1 ... 1e-6, as far as the number of impostor pairs allows).
- :func:`kfold_accuracy`: the LFW protocol (Huang et al., "Labeled Faces in the Wild", 2007;
  "unrestricted" view 2): for each of 10 folds, the threshold that is best on the other 9
  folds is applied to it; the mean and standard deviation of the 10 accuracies.

Identification searches a gallery of enrolled identities:

- :func:`identification_accuracy`: closed-set rank-k accuracy (top-1, top-5).
- :func:`open_set_identification`: TPIR at FPIR (NIST FRVT's definitions, rank 1), probes
  of people outside the gallery included.

:class:`StreamingQuantile` estimates a quantile of a stream of scores without storing it
(Robbins and Monro's stochastic approximation), which gives the threshold for a target FAR
on galleries too large to keep every impostor score.

All scores are compared in float64; thresholds mean "accept when score > threshold".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import Tensor

from sightkit._api import export

#: The FAR targets reported by default.
FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def _scores_labels(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(scores, Tensor) or scores.dim() != 1 or not scores.is_floating_point():
        got = f"shape {tuple(scores.shape)}, dtype {scores.dtype}" if isinstance(scores, Tensor) else type(scores)
        raise TypeError(f"scores must be a 1-D floating-point tensor [P], got {got}")
    if not isinstance(labels, Tensor) or labels.shape != scores.shape:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor [P] = [{scores.shape[0]}] (True: same person), got {got}")
    if labels.dtype != torch.bool:
        if labels.is_floating_point() or not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("labels must be booleans or 0/1 integers (1: same person)")
        labels = labels.bool()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite (no NaN or infinity)")
    return scores.double().cpu(), labels.cpu()


@export("eval.RocCurve")
@dataclass
class RocCurve:
    """TAR and FAR at every distinct threshold, in decreasing threshold order, starting at
    ``(far, tar) = (0, 0)`` for the threshold ``+inf`` (accept nothing). A pair is accepted
    at threshold ``thresholds[i]`` when its score is ``>= thresholds[i]``."""

    far: Tensor
    tar: Tensor
    thresholds: Tensor

    @property
    def auc(self) -> float:
        """The area under the curve (trapezoids)."""
        return float(torch.trapezoid(self.tar, self.far))


@export("eval.roc_curve")
def roc_curve(scores: Tensor, labels: Tensor) -> RocCurve:
    """The ROC of a verification score set.

    Args:
        scores: ``[P]`` similarity of each pair (larger: more alike).
        labels: ``[P]`` True (or 1) for same-person pairs, False (0) for impostor pairs;
            both kinds must occur.

    Returns:
        A :class:`RocCurve` with one point per distinct score plus the origin.
    """
    scores, labels = _scores_labels(scores, labels)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"labels must hold both kinds of pairs, got {positives} same and {negatives} different")
    # The order within a run of equal scores does not matter (only run ends are read): no stable sort.
    ordered, order = torch.sort(scores, descending=True)
    hits = labels[order].double()
    # The last index of each run of equal scores: a threshold accepts the whole run.
    last = torch.nonzero(torch.diff(ordered, append=ordered.new_tensor([-math.inf]))).squeeze(1)
    true_accepts = torch.cumsum(hits, 0)[last]
    false_accepts = (last + 1).double() - true_accepts
    zero = scores.new_zeros(1)
    return RocCurve(
        far=torch.cat([zero, false_accepts / negatives]),
        tar=torch.cat([zero, true_accepts / positives]),
        thresholds=torch.cat([scores.new_tensor([math.inf]), ordered[last]]),
    )


def _threshold_at_rate(negative_scores: Tensor, rate: float, descending: Tensor | None = None) -> float:
    """The smallest threshold ``t`` among the negative scores with ``mean(negatives > t) <= rate``
    (``descending``: the negative scores already sorted that way, to share one sort)."""
    allowed = math.floor(rate * negative_scores.numel() + 1e-9)
    if allowed >= negative_scores.numel():
        return -math.inf
    if descending is not None:
        return float(descending[allowed])
    return float(torch.topk(negative_scores, allowed + 1).values[-1])


@export("eval.tar_at_far")
def tar_at_far(scores: Tensor, labels: Tensor, fars: Sequence[float] = FARS) -> dict[float, tuple[float, float]]:
    """TAR at the strictest threshold whose FAR is at most each target.

    A target FAR ``f`` is reported only when there are at least ``1 / f`` impostor pairs (so
    that it is measurable); the threshold lets through ``floor(f * negatives)`` impostors
    (accept when score > threshold).

    Returns:
        ``{far: (tar, threshold)}`` for the measurable targets, in the order given.
    """
    scores, labels = _scores_labels(scores, labels)
    negative, positive = scores[~labels], scores[labels]
    if positive.numel() == 0 or negative.numel() == 0:
        raise ValueError("labels must hold both same-person and different-person pairs")
    # One sort of each side serves every target: thresholds by index, TAR by binary search.
    descending = torch.sort(negative, descending=True).values
    ascending = torch.sort(positive).values
    results = {}
    for far in fars:
        if not 0 < far < 1:
            raise ValueError(f"fars must lie in (0, 1), got {far}")
        if negative.numel() * far < 1 - 1e-9:
            continue
        threshold = _threshold_at_rate(negative, far, descending)
        rejected = int(torch.searchsorted(ascending, ascending.new_tensor([threshold]), right=True))
        results[far] = (1.0 - rejected / ascending.numel(), threshold)
    return results


def _best_threshold(ordered: Tensor, hits: Tensor) -> float:
    """The threshold (accept when score > t) with the highest accuracy on pairs given in
    ascending score order (``hits``: their same-person flags as float64): midway between two
    consecutive distinct scores (or below/above all); the lowest one on ties."""
    last = torch.nonzero(torch.diff(ordered, append=ordered.new_tensor([math.inf]))).squeeze(1)
    below = torch.cumsum(hits, 0)[last]
    # Threshold just above the run ending at `last`: the run and everything below it is rejected.
    correct = torch.cat([hits.sum().reshape(1), (last + 1).double() - below + (hits.sum() - below)])
    best = int(torch.argmax(correct))
    if best == 0:
        return float(ordered[0] - 1.0)
    upper = ordered[last[best - 1] + 1] if best - 1 < last.numel() - 1 else ordered[-1] + 1.0
    return float((ordered[last[best - 1]] + upper) / 2)


@export("eval.kfold_accuracy")
def kfold_accuracy(scores: Tensor, labels: Tensor, folds: int | Tensor = 10) -> dict[str, float | list[float]]:
    """Verification accuracy by the LFW protocol: each fold is classified with the threshold
    that is best on all the other folds.

    Args:
        scores, labels: ``[P]`` pair scores and same-person flags.
        folds: the number of folds, cut as consecutive equal blocks in pair order (LFW's
            pairs.txt lists its folds one after another), or ``[P]`` fold ids.

    Returns:
        ``{"accuracy": mean, "std": standard deviation (population, as insightface), "accuracies":
        per fold, "thresholds": per fold, "best_threshold": best on all pairs}``.
    """
    scores, labels = _scores_labels(scores, labels)
    count = scores.numel()
    if isinstance(folds, Tensor):
        if folds.shape != scores.shape:
            raise ValueError(f"folds must be an int or a tensor [P] = [{count}] of fold ids, got {tuple(folds.shape)}")
        fold_ids = folds.cpu().long()
    else:
        if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= count:
            raise ValueError(f"folds must be an integer in [2, P={count}], got {folds!r}")
        fold_ids = torch.arange(count) * folds // count
    # One sort for all folds: each fold's training pairs, in score order, are a filter of it.
    order = torch.argsort(scores, stable=True)
    ordered, hits, ordered_folds = scores[order], labels[order].double(), fold_ids[order]
    accuracies, thresholds = [], []
    for fold in torch.unique(fold_ids).tolist():
        train = ordered_folds != fold
        threshold = _best_threshold(ordered[train], hits[train])
        test = fold_ids == fold
        accuracies.append(float(((scores[test] > threshold) == labels[test]).double().mean()))
        thresholds.append(threshold)
    values = torch.tensor(accuracies, dtype=torch.float64)
    return {
        "accuracy": float(values.mean()),
        "std": float(values.std(unbiased=False)),
        "accuracies": accuracies,
        "thresholds": thresholds,
        "best_threshold": _best_threshold(ordered, hits),
    }


def _identity_scores(similarity: Tensor, gallery_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per probe and gallery identity, the best score over that identity's gallery entries:
    ``([P, I] scores, [I] identity labels)``."""
    if not isinstance(similarity, Tensor) or similarity.dim() != 2 or not similarity.is_floating_point():
        got = tuple(similarity.shape) if isinstance(similarity, Tensor) else type(similarity).__name__
        raise ValueError(f"similarity must be a floating-point tensor [P, G] (probes x gallery), got {got}")
    if not isinstance(gallery_labels, Tensor) or gallery_labels.shape != similarity.shape[1:]:
        got = tuple(gallery_labels.shape) if isinstance(gallery_labels, Tensor) else type(gallery_labels).__name__
        raise ValueError(f"gallery_labels must be a tensor [G] = [{similarity.shape[1]}], got {got}")
    identities, inverse = torch.unique(gallery_labels.cpu(), return_inverse=True)
    scores = similarity.double().cpu()
    best = scores.new_full((scores.shape[0], identities.numel()), -math.inf)
    best.scatter_reduce_(1, inverse.expand_as(scores), scores, reduce="amax")
    return best, identities


@export("eval.identification_accuracy")
def identification_accuracy(
    similarity: Tensor, probe_labels: Tensor, gallery_labels: Tensor, ranks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Closed-set identification: the fraction of probes whose identity is among the ``k`` best
    gallery identities (an identity's score is its best entry's; ties count against the probe).

    Args:
        similarity: ``[P, G]`` scores of probes against gallery entries.
        probe_labels: ``[P]`` identity of each probe; each must be enrolled in the gallery.
        gallery_labels: ``[G]`` identity of each gallery entry (several entries per identity allowed).
        ranks: the ``k`` values.

    Returns:
        ``{k: rank-k accuracy}``.
    """
    best, identities = _identity_scores(similarity, gallery_labels)
    probe_labels = probe_labels.cpu()
    position = torch.searchsorted(identities, probe_labels)
    enrolled = (position < identities.numel()) & (
        identities[position.clamp(max=identities.numel() - 1)] == probe_labels
    )
    if not bool(enrolled.all()):
        missing = sorted(set(probe_labels[~enrolled].tolist()))[:5]
        raise ValueError(f"probe_labels must all be enrolled in the gallery (closed set), not enrolled: {missing}")
    mated = best.gather(1, position[:, None])
    rank = (best >= mated).sum(1)  # identities at least as good, itself included: ties rank the probe last
    return {k: float((rank <= k).double().mean()) for k in ranks}


@export("eval.open_set_identification")
def open_set_identification(
    similarity: Tensor, probe_labels: Tensor, gallery_labels: Tensor, fpirs: Sequence[float] = (1e-1, 1e-2, 1e-3)
) -> dict[float, tuple[float, float]]:
    """Open-set identification at rank 1 (NIST FRVT): TPIR at FPIR.

    A probe whose identity is not in the gallery (non-mated) is a false positive when its
    best gallery score passes the threshold; a mated probe is a true positive when its best
    gallery identity is the right one and its score passes the threshold.

    Args:
        similarity: ``[P, G]`` probe x gallery scores.
        probe_labels: ``[P]`` identities; those absent from ``gallery_labels`` are non-mated.
        gallery_labels: ``[G]``.
        fpirs: FPIR targets; each needs at least ``1 / fpir`` non-mated probes.

    Returns:
        ``{fpir: (tpir, threshold)}`` (accept when score > threshold).
    """
    best, identities = _identity_scores(similarity, gallery_labels)
    probe_labels = probe_labels.cpu()
    top_score, top_index = best.max(1)
    mated = torch.isin(probe_labels, identities)
    if not bool(mated.any()) or bool(mated.all()):
        raise ValueError(
            f"open-set identification needs mated and non-mated probes, got {int(mated.sum())} mated of {mated.numel()}"
        )
    correct = identities[top_index] == probe_labels
    results = {}
    for fpir in fpirs:
        if not 0 < fpir < 1:
            raise ValueError(f"fpirs must lie in (0, 1), got {fpir}")
        if int((~mated).sum()) * fpir < 1 - 1e-9:
            continue
        threshold = _threshold_at_rate(top_score[~mated], fpir)
        hits = correct[mated] & (top_score[mated] > threshold)
        results[fpir] = (float(hits.double().mean()), threshold)
    return results


@export("eval.StreamingQuantile")
class StreamingQuantile:
    """The ``q``-quantile of a stream, in constant memory (Robbins and Monro, "A Stochastic
    Approximation Method", 1951).

    The quantile ``θ`` solves ``P(x <= θ) = q``. Each batch moves the estimate by
    ``(q - fraction of the batch <= θ) / (n f)``, where ``n`` counts the samples seen and ``f``
    is a running estimate of the density at ``θ`` (the fraction of samples within
    ``bandwidth`` of it, over ``2 bandwidth``): the gain that makes the recursion efficient,
    which matters for the extreme quantiles of a low FAR, where the density is small. The
    first batch starts the estimate at its own exact quantile. :attr:`value` is the
    Polyak-Ruppert average of the iterates after that first batch, which converges at the
    rate of the exact sample quantile.

    For a FAR target ``f`` on impostor scores use ``q = 1 - f``; accept when score > value.
    """

    def __init__(self, q: float, bandwidth: float | None = None) -> None:
        if not 0 < q < 1:
            raise ValueError(f"q must lie in (0, 1), got {q}")
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 (None: from the first batch), got {bandwidth}")
        self.q = float(q)
        self.bandwidth = bandwidth
        self.count = 0
        self.estimate = math.nan
        self.density = math.nan
        self._average = math.nan
        self._averaged = 0

    @property
    def value(self) -> float:
        """The current estimate (NaN before any data)."""
        return self._average if self._averaged else self.estimate

    def update(self, scores: Tensor) -> StreamingQuantile:
        """Take one batch ``[M]`` of scores; returns ``self``."""
        if not isinstance(scores, Tensor) or scores.dim() != 1 or not scores.is_floating_point():
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"scores must be a 1-D floating-point tensor, got {got}")
        if scores.numel() == 0:
            return self
        scores = scores.double()
        size = scores.numel()
        if self.count == 0:
            self.estimate = float(torch.quantile(scores, self.q)) if size <= 16_000_000 else float(scores.median())
            if self.bandwidth is None:
                # Silverman's rule on the first batch: wide enough to see samples even in a thin tail.
                spread = float(scores.std()) if size > 1 else 1.0
                self.bandwidth = 1.06 * (spread if spread > 0 else 1.0) * size ** (-1 / 5)
            self.density = self._local_density(scores)
            self.count = size
            return self
        self.count += size
        step = size / self.count
        self.density += step * (self._local_density(scores) - self.density)
        below = float((scores <= self.estimate).double().mean())
        floor = 1.0 / (self.count * self.bandwidth)  # at least one sample in the window: keeps the gain finite
        self.estimate += step * (self.q - below) / max(self.density, floor)
        self._averaged += size
        previous = 0.0 if math.isnan(self._average) else self._average
        self._average = previous + size / self._averaged * (self.estimate - previous)
        return self

    def _local_density(self, scores: Tensor) -> float:
        assert self.bandwidth is not None  # set on the first batch
        return float(((scores - self.estimate).abs() <= self.bandwidth).double().mean()) / (2 * self.bandwidth)


@export("eval.plot_roc")
def plot_roc(curves: dict[str, RocCurve], path: str | os.PathLike[str], title: str = "ROC") -> Figure:
    """Plot TAR against FAR (log scale) for each named curve and save the PNG; returns the figure."""
    figure = Figure(figsize=(6, 4.5), dpi=120)
    axes = figure.add_subplot()
    for name, curve in curves.items():
        keep = curve.far > 0
        axes.plot(curve.far[keep].numpy(), curve.tar[keep].numpy(), label=f"{name} (AUC {curve.auc:.4f})")
    axes.set_xscale("log")
    axes.set_xlabel("false accept rate")
    axes.set_ylabel("true accept rate")
    axes.set_ylim(0, 1.01)
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="lower right")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    return figure
