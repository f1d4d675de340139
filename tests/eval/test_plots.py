"""Precision-recall plots: the curves drawn are COCO's precision array, and their means are its APs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightkit.eval import CocoEvaluator, plot_precision_recall


def evaluated() -> tuple[CocoEvaluator, dict[str, float]]:
    """Two categories with ground truth (one fully found, one half found at mixed IoUs) and one without."""
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
        ],
        "categories": [{"id": c, "name": n} for c, n in ((1, "tree"), (2, "bush"), (3, "rock"))],
    }
    evaluator = CocoEvaluator(coco)
    evaluator.update(
        {
            1: {
                "boxes": torch.tensor([[0.0, 0, 40, 40], [50, 50, 90, 80], [100, 100, 120, 120]]),
                "scores": torch.tensor([0.9, 0.8, 0.95]),
                "labels": torch.tensor([0, 1, 1]),
            },
            2: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
        }
    )
    return evaluator, evaluator.compute()


def test_curves_are_the_precision_array(tmp_path: Path) -> None:
    evaluator, metrics = evaluated()
    figure = evaluator.plot_precision_recall(tmp_path / "plots" / "pr.png", iou=0.5)
    lines = figure.axes[0].get_lines()
    assert [line.get_label().split(" (")[0] for line in lines] == ["tree", "bush", "all"]
    precision = evaluator.precision[0, :, :, 0, -1]  # IoU 0.50, all areas, 100 detections
    recall = np.linspace(0, 1, 101)
    for k, line in enumerate(lines[:2]):
        np.testing.assert_array_equal(line.get_xdata(), recall)
        np.testing.assert_array_equal(line.get_ydata(), precision[:, k])
    assert lines[2].get_ydata().mean() == pytest.approx(metrics["AP50"], abs=1e-12)
    assert lines[2].get_label() == f"all (AP {metrics['AP50']:.3f})"
    with Image.open(tmp_path / "plots" / "pr.png") as png:
        assert (png.format, png.size) == ("PNG", (840, 660))


def test_mean_over_thresholds_gives_ap(tmp_path: Path) -> None:
    evaluator, metrics = evaluated()
    figure = evaluator.plot_precision_recall(tmp_path / "pr.png", iou=None)
    assert figure.axes[0].get_lines()[-1].get_ydata().mean() == pytest.approx(metrics["AP"], abs=1e-12)
    assert "IoU 0.50:0.95" in figure.axes[0].get_title()
    with pytest.raises(ValueError, match=r"iou must be one of \[0.5, 0.55"):
        evaluator.plot_precision_recall(tmp_path / "x.png", iou=0.33)


def test_many_categories_and_no_ground_truth(tmp_path: Path) -> None:
    precision = np.tile(np.linspace(1, 0, 11)[:, None], (1, 20))
    lines = (
        plot_precision_recall(precision, tmp_path / "many.png", names=[str(k) for k in range(20)]).axes[0].get_lines()
    )
    assert len(lines) == 21
    assert [line.get_label() for line in lines[-1:]] == ["all (AP 0.500)"]
    assert all(line.get_label().startswith("_") for line in lines[:-1])  # unlabelled thin curves

    empty = plot_precision_recall(-np.ones((101, 2)), tmp_path / "empty.png", names=["a", "b"])
    assert [text.get_text() for text in empty.axes[0].texts] == ["no category has ground truth"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"precision must have shape \[R, K\], got \(101,\)"):
        plot_precision_recall(np.zeros(101), tmp_path / "a.png", names=["a"])
    with pytest.raises(ValueError, match=r"names must give one name per category \(2\), got 1"):
        plot_precision_recall(np.zeros((101, 2)), tmp_path / "a.png", names=["a"])
    with pytest.raises(ValueError, match=r"recall_thresholds must have shape \[101\], got \(5,\)"):
        plot_precision_recall(np.zeros((101, 1)), tmp_path / "a.png", names=["a"], recall_thresholds=np.zeros(5))


def test_labelled_curves_have_distinct_colours(tmp_path: Path) -> None:
    # Twelve categories: matplotlib's default colour cycle would repeat its first two.
    precision = np.tile(np.linspace(1, 0, 11)[:, None], (1, 12))
    figure = plot_precision_recall(precision, tmp_path / "twelve.png", names=[f"c{k}" for k in range(12)])
    colours = [tuple(line.get_color()) for line in figure.axes[0].get_lines()[:-1]]
    assert len(colours) == 12 and len(set(colours)) == 12
