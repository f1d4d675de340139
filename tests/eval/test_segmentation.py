"""Segmentation metrics: the confusion matrix against a counting loop, mIoU of the ground truth
and of a hand-made confusion matrix, absent classes, accumulation, two gloo ranks equal to one
process, the per-class table and plot, and input errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sightkit.eval import SegmentationEvaluator, confusion_matrix, segmentation_metrics


def test_confusion_matrix_counts_like_a_loop() -> None:
    pred = torch.randint(0, 4, (3, 7, 5))
    target = torch.randint(0, 4, (3, 7, 5))
    target[0, 0] = 255
    expected = np.zeros((4, 4), dtype=np.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != 255:
            expected[t, p] += 1
    assert confusion_matrix(pred, target, 4).tolist() == expected.tolist()


def test_ground_truth_scores_one() -> None:
    target = torch.randint(0, 5, (2, 16, 16))
    target[:, :2] = 255
    evaluator = SegmentationEvaluator(5)
    evaluator.update(target.masked_fill(target == 255, 0), target)
    assert evaluator.compute() == {"mIoU": 1.0, "pixel_accuracy": 1.0, "mean_accuracy": 1.0}


def test_metrics_of_a_known_confusion_matrix_by_hand() -> None:
    # rows: true class, columns: predicted class.
    confusion = torch.tensor([[50, 2, 3], [4, 30, 6], [1, 0, 4]])
    metrics = segmentation_metrics(confusion)
    # IoU_c = TP / (row + column - TP).
    iou = [50 / (55 + 55 - 50), 30 / (40 + 32 - 30), 4 / (5 + 13 - 4)]
    assert metrics["IoU"] == pytest.approx(iou)
    assert metrics["mIoU"] == pytest.approx(sum(iou) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(84 / 100)
    assert metrics["accuracy"] == pytest.approx([50 / 55, 30 / 40, 4 / 5])
    assert metrics["mean_accuracy"] == pytest.approx((50 / 55 + 30 / 40 + 4 / 5) / 3)


def test_a_class_absent_everywhere_is_left_out_of_the_mean() -> None:
    pred = torch.tensor([0, 0, 1, 1])
    target = torch.tensor([0, 1, 1, 1])
    metrics = segmentation_metrics(confusion_matrix(pred, target, 3))
    assert metrics["IoU"][:2] == pytest.approx([1 / 2, 2 / 3]) and math.isnan(metrics["IoU"][2])
    assert metrics["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # A class predicted but never true has IoU 0 (it counts) and no accuracy (it does not).
    metrics = segmentation_metrics(confusion_matrix(torch.tensor([2, 1]), torch.tensor([0, 1]), 3))
    assert metrics["IoU"] == pytest.approx([0.0, 1.0, 0.0]) and metrics["mIoU"] == pytest.approx(1 / 3)
    assert math.isnan(metrics["accuracy"][2]) and metrics["mean_accuracy"] == pytest.approx(0.5)


def test_nothing_counted_gives_nan() -> None:
    evaluator = SegmentationEvaluator(2)
    assert all(math.isnan(v) for v in evaluator.compute().values())
    evaluator.update(torch.zeros(0, 4, 4, dtype=torch.int64), torch.zeros(0, 4, 4, dtype=torch.int64))
    assert evaluator.matrix.sum() == 0


def test_accumulating_batches_equals_one_pass() -> None:
    pred, target = torch.randint(0, 3, (4, 6, 6)), torch.randint(0, 3, (4, 6, 6))
    evaluator = SegmentationEvaluator(3)
    for i in range(4):
        evaluator.update(pred[i], target[i])
    assert torch.equal(evaluator.matrix, confusion_matrix(pred, target, 3))
    evaluator.reset()
    assert evaluator.matrix.sum() == 0


def test_per_class_rows_table_and_plot(tmp_path: Path) -> None:
    evaluator = SegmentationEvaluator(3, class_names=["background", "circle", "star"])
    evaluator.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
    rows = evaluator.per_class()
    assert [r["name"] for r in rows] == ["background", "circle", "star"]
    assert [r["pixels"] for r in rows] == [1, 3, 0]
    assert rows[1]["IoU"] == pytest.approx(2 / 3) and rows[1]["accuracy"] == pytest.approx(2 / 3)
    assert evaluator.per_class_table().row_count == 3
    figure = evaluator.plot_confusion(tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 0
    # The heat map shows row-normalised fractions: circle's row is (1/3, 2/3, 0).
    np.testing.assert_allclose(figure.axes[0].images[0].get_array()[1], [1 / 3, 2 / 3, 0])


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"pred and target must have the same shape, got \(2, 3\) and \(3, 2\)"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match=r"target values must be in \[0, 2\) or ignore_index=255, got values in"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 5]), 2)
    with pytest.raises(ValueError, match=r"pred values must be in \[0, 2\), got values in \[-1, 1\]"):
        confusion_matrix(torch.tensor([-1, 1]), torch.tensor([0, 1]), 2)
    with pytest.raises(TypeError, match=r"pred must be an integer tensor of class indices, got dtype torch\.float32"):
        confusion_matrix(torch.zeros(2), torch.zeros(2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="class_names must give 3 names, got 2"):
        SegmentationEvaluator(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"confusion must be a square \[C, C\] matrix"):
        segmentation_metrics(torch.zeros(2, 3))


SHARDS = {0: [0, 1, 2], 1: [3, 4]}


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    pred = torch.randint(0, 4, (5, 8, 8), generator=generator)
    target = torch.randint(0, 4, (5, 8, 8), generator=generator)
    target[:, 0] = 255
    return pred, target


def _worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        pred, target = _data()
        evaluator = SegmentationEvaluator(4)
        for i in SHARDS[rank]:
            evaluator.update(pred[i], target[i])
        result = {"metrics": evaluator.compute(), "matrix": evaluator.matrix.tolist()}
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh processes import torch
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    pred, target = _data()
    single = SegmentationEvaluator(4)
    single.update(pred, target)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["matrix"] == single.matrix.tolist()
        assert result["metrics"] == pytest.approx(single.compute())
