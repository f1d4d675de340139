"""Face metrics on score sets whose ROC, thresholds and ranks are worked out by hand; the
streaming quantile against the exact quantile of 10^6 scores."""

import math

import pytest
import torch

from sightkit.eval import (
    StreamingQuantile,
    identification_accuracy,
    kfold_accuracy,
    open_set_identification,
    plot_roc,
    roc_curve,
    tar_at_far,
)

# Same-person pairs score 0.9, 0.8, 0.4; impostors 0.7, 0.4, 0.2, 0.1 (a tie at 0.4).
SCORES = torch.tensor([0.9, 0.7, 0.8, 0.4, 0.4, 0.2, 0.1])
LABELS = torch.tensor([1, 0, 1, 1, 0, 0, 0])


def test_roc_by_hand() -> None:
    roc = roc_curve(SCORES, LABELS)
    # Thresholds +inf, 0.9, 0.8, 0.7, 0.4 (both tied pairs at once), 0.2, 0.1.
    torch.testing.assert_close(roc.thresholds.float(), torch.tensor([math.inf, 0.9, 0.8, 0.7, 0.4, 0.2, 0.1]))
    torch.testing.assert_close(roc.tar, torch.tensor([0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1], dtype=torch.float64))
    torch.testing.assert_close(roc.far, torch.tensor([0, 0, 0, 1 / 4, 2 / 4, 3 / 4, 1], dtype=torch.float64))
    # Area: 2/3 over [0, 1/4], the trapezoid 2/3 -> 1 over [1/4, 1/2], then 1 over [1/2, 1].
    assert roc.auc == pytest.approx(2 / 3 / 4 + (2 / 3 + 1) / 2 / 4 + 1 / 2)


def test_tar_at_far_by_hand() -> None:
    # 4 impostors: FAR 0.25 lets one through (threshold at the 2nd best impostor, 0.4: accept > 0.4),
    # FAR 0.5 lets two through (threshold 0.2). FAR 0.1 needs 10 impostors to be measurable.
    result = tar_at_far(SCORES, LABELS, fars=(0.25, 0.5, 0.1))
    assert list(result) == [0.25, 0.5]
    assert result[0.25] == pytest.approx((2 / 3, 0.4))
    assert result[0.5] == pytest.approx((1.0, 0.2))


def test_tar_at_far_on_a_known_distribution() -> None:
    # Impostors uniform on the grid k/10^4: at FAR 1e-2 the threshold is the 101st largest.
    negatives = torch.arange(10_000, dtype=torch.float64) / 10_000
    positives = torch.tensor([0.995, 0.9899, 0.5], dtype=torch.float64)
    result = tar_at_far(torch.cat([positives, negatives]), torch.cat([torch.ones(3), torch.zeros(10_000)]).bool())
    assert set(result) == {1e-1, 1e-2, 1e-3, 1e-4}  # 1e-5 and 1e-6 need more impostors
    assert result[1e-2] == pytest.approx((1 / 3, 0.9899))
    assert result[1e-4][1] == pytest.approx(0.9998)


def test_kfold_accuracy_by_hand() -> None:
    # Two folds of four pairs. Fold 0: same 0.9, 0.6; different 0.5, 0.1. Fold 1: same 0.8, 0.3;
    # different 0.7, 0.2. Trained on fold 1, the best threshold accepts > 0.75 or > 0.25 (3 of 4
    # right either way; the lowest is taken: midway between 0.2 and 0.3) -> fold 0: 0.9, 0.6,
    # 0.5 accepted, 0.1 rejected -> 3/4. Trained on fold 0, any threshold in [0.5, 0.6) is
    # perfect (midway: 0.55) -> fold 1: 0.8 and 0.7 accepted, 0.3 and 0.2 rejected -> 2/4.
    scores = torch.tensor([0.9, 0.6, 0.5, 0.1, 0.8, 0.3, 0.7, 0.2])
    labels = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
    result = kfold_accuracy(scores, labels, folds=2)
    assert result["thresholds"] == pytest.approx([0.25, 0.55])
    assert result["accuracies"] == pytest.approx([0.75, 0.5])
    assert result["accuracy"] == pytest.approx(0.625) and result["std"] == pytest.approx(0.125)
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert kfold_accuracy(scores, labels, folds=ids)["accuracies"] == result["accuracies"]


def test_separable_pairs_score_perfectly() -> None:
    g = torch.Generator().manual_seed(0)
    same = torch.rand(300, generator=g) * 0.5 + 0.5
    different = torch.rand(300, generator=g) * 0.5 - 0.01
    scores, labels = torch.cat([same, different]), torch.cat([torch.ones(300), torch.zeros(300)])
    order = torch.randperm(600, generator=g)
    result = kfold_accuracy(scores[order], labels[order].long())
    assert result["accuracy"] == 1.0 and len(result["accuracies"]) == 10


def test_identification_ranks_by_hand() -> None:
    # Gallery: identity 7 twice, identities 3 and 5 once. Per-identity scores are maxima.
    gallery = torch.tensor([7, 3, 7, 5])
    similarity = torch.tensor(
        [
            [0.1, 0.2, 0.9, 0.3],  # probe of 7: best 7 (0.9) -> rank 1
            [0.5, 0.6, 0.1, 0.7],  # probe of 3: 5 (0.7) beats 3 (0.6), then 7 (0.5) -> rank 2
            [0.8, 0.2, 0.1, 0.1],  # probe of 5: 7 (0.8), 3 (0.2), 5 (0.1) -> rank 3
            [0.4, 0.4, 0.0, 0.1],  # probe of 3: tied with 7 at 0.4 -> rank 2 (ties count against)
        ]
    )
    probes = torch.tensor([7, 3, 5, 3])
    result = identification_accuracy(similarity, probes, gallery, ranks=(1, 2, 3))
    assert result == {1: pytest.approx(1 / 4), 2: pytest.approx(3 / 4), 3: pytest.approx(1.0)}


def test_open_set_by_hand() -> None:
    gallery = torch.tensor([0, 1])
    similarity = torch.tensor(
        [
            [0.9, 0.1],  # mated 0, right, 0.9
            [0.2, 0.6],  # mated 1, right, 0.6
            [0.7, 0.3],  # mated 1, wrong at rank 1 (0.7 for identity 0): never a true positive
            [0.5, 0.4],  # non-mated, top 0.5
            [0.3, 0.8],  # non-mated, top 0.8
        ]
    )
    probes = torch.tensor([0, 1, 1, 9, 8])
    # FPIR 0.5 lets one of the two non-mated probes through: threshold 0.5 -> true positives 0.9 and 0.6.
    result = open_set_identification(similarity, probes, gallery, fpirs=(0.5, 0.1))
    assert list(result) == [0.5] and result[0.5] == pytest.approx((2 / 3, 0.5))


@pytest.mark.parametrize("q", [0.5, 0.99, 0.999])
def test_streaming_quantile_converges_on_a_million_scores(q: float) -> None:
    # 10^6 standard normal scores in batches of 10^4. Tolerance: the sample quantile's own
    # standard error, sqrt(q (1 - q) / n) / f(θ), is 0.0013, 0.0037 and 0.011 here; the
    # stream estimate must lie within 3 of those of the exact quantile of the same scores.
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(1_000_000, generator=g, dtype=torch.float64)
    estimator = StreamingQuantile(q)
    for batch in scores.split(10_000):
        estimator.update(batch)
    exact = float(torch.quantile(scores, q))
    theta = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(q)).item()
    density = math.exp(-(theta**2) / 2) / math.sqrt(2 * math.pi)
    standard_error = math.sqrt(q * (1 - q) / scores.numel()) / density
    assert abs(estimator.value - exact) < 3 * standard_error
    assert estimator.count == 1_000_000


def test_streaming_quantile_edge_cases() -> None:
    estimator = StreamingQuantile(0.5)
    assert math.isnan(estimator.value)
    estimator.update(torch.tensor([]))
    assert math.isnan(estimator.value)
    estimator.update(torch.tensor([1.0, 2.0, 3.0]))
    assert estimator.value == 2.0
    with pytest.raises(ValueError, match=r"q must lie in \(0, 1\), got 1.5"):
        StreamingQuantile(1.5)


def test_plot_roc_writes_a_png(tmp_path) -> None:
    path = tmp_path / "plots" / "roc.png"
    figure = plot_roc({"model": roc_curve(SCORES, LABELS)}, path)
    assert path.stat().st_size > 1000 and "AUC 0.8750" in figure.axes[0].get_legend().get_texts()[0].get_text()


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="labels must hold both kinds of pairs, got 2 same and 0 different"):
        roc_curve(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"labels must be a tensor \[P\] = \[2\]"):
        roc_curve(torch.tensor([0.1, 0.2]), torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="scores must be finite"):
        tar_at_far(torch.tensor([0.1, math.nan]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"folds must be an integer in \[2, P=7\], got 1"):
        kfold_accuracy(SCORES, LABELS, folds=1)
    with pytest.raises(ValueError, match=r"must all be enrolled in the gallery \(closed set\), not enrolled: \[4\]"):
        identification_accuracy(torch.zeros(1, 2), torch.tensor([4]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs mated and non-mated probes, got 1 mated of 1"):
        open_set_identification(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([0, 1]))


def test_roc_equals_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(3)
    labels = torch.rand(5000, generator=g) < 0.3
    scores = torch.where(labels, 0.4, 0.0) + torch.randn(5000, generator=g, dtype=torch.float64) * 0.2
    scores = (scores * 50).round() / 50  # ties, as quantised scores have
    far, tar, thresholds = metrics.roc_curve(labels.numpy(), scores.numpy(), drop_intermediate=False)
    ours = roc_curve(scores, labels)
    torch.testing.assert_close(ours.far, torch.from_numpy(far))
    torch.testing.assert_close(ours.tar, torch.from_numpy(tar))
    torch.testing.assert_close(ours.thresholds[1:], torch.from_numpy(thresholds[1:]))
    assert ours.auc == pytest.approx(metrics.roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
