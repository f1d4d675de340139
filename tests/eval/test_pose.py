"""Pose evaluation: OKS AP of the ground truth is 1, PCK and per-keypoint errors by hand,
the error table, errors for bad input."""

import math

import pytest
import torch

from sightkit.data import COCO_KEYPOINT_NAMES
from sightkit.eval import PoseEvaluator, keypoint_error_table, keypoint_errors, pck


def people_dataset() -> dict:
    """Three images, four people; one person has a single labelled keypoint, one none."""
    g = torch.Generator().manual_seed(0)
    annotations = []
    for index, (image_id, labelled) in enumerate([(1, 17), (1, 12), (2, 1), (3, 0)]):
        points = torch.rand(17, 2, generator=g) * 80 + torch.tensor([20.0 + 100 * index, 30.0])
        visibility = torch.zeros(17)
        visibility[:labelled] = 2
        points[visibility == 0] = 0
        keypoints = torch.cat([points, visibility[:, None]], -1)
        annotations.append(
            {
                "id": index + 1,
                "image_id": image_id,
                "category_id": 1,
                "bbox": [20.0 + 100 * index, 30.0, 80.0, 80.0],
                "area": 3000.0,
                "iscrowd": 0,
                "keypoints": keypoints.ravel().tolist(),
                "num_keypoints": labelled,
            }
        )
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 640, "height": 200} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_KEYPOINT_NAMES)}],
        "annotations": annotations,
    }


def predictions_from_truth(data: dict, noise: float = 0.0) -> tuple:
    g = torch.Generator().manual_seed(1)
    anns = [a for a in data["annotations"] if a["num_keypoints"] > 0]  # top-down evaluates labelled people
    truth = torch.tensor([a["keypoints"] for a in anns]).reshape(-1, 17, 3)
    pred = truth.clone()
    pred[..., :2] += noise * torch.randn(pred[..., :2].shape, generator=g)
    pred[..., 2] = 0.9  # keypoint scores
    boxes = torch.tensor([a["bbox"] for a in anns])
    boxes[:, 2:] += boxes[:, :2]
    image_ids = torch.tensor([a["image_id"] for a in anns])
    return image_ids, pred, torch.ones(len(anns)), torch.tensor([a["area"] for a in anns]), boxes, truth


def test_ground_truth_as_predictions_scores_one() -> None:
    data = people_dataset()
    evaluator = PoseEvaluator(data, COCO_KEYPOINT_NAMES)
    evaluator.update(*predictions_from_truth(data))
    metrics = evaluator.compute()
    assert metrics["AP"] == 1.0 and metrics["AP50"] == 1.0 and metrics["AR"] == 1.0
    assert metrics["PCK"] == 1.0 and metrics["EPE"] == 0.0
    rows = evaluator.rows
    assert [r["labelled"] for r in rows] == [3] + [2] * 11 + [1] * 5
    assert evaluator.per_keypoint_table().row_count == 17


def test_noise_lowers_every_measure() -> None:
    data = people_dataset()
    evaluator = PoseEvaluator(data, COCO_KEYPOINT_NAMES)
    evaluator.update(*predictions_from_truth(data, noise=3.0))
    metrics = evaluator.compute()
    assert 0 < metrics["AP"] < 1 and 0 < metrics["PCK"] < 1
    assert metrics["EPE"] == pytest.approx(3.0 * math.sqrt(math.pi / 2), rel=0.25)  # Rayleigh mean of N(0, 3²) xy


def test_pck_and_errors_by_hand() -> None:
    truth = torch.tensor([[[10.0, 10.0, 2.0], [50.0, 50.0, 1.0], [0.0, 0.0, 0.0]]])
    pred = torch.tensor([[[13.0, 14.0], [60.0, 50.0], [100.0, 100.0]]])
    size = torch.tensor([[100.0, 200.0]])
    # Keypoint 0: (3, 4) / (100, 200) = (0.03, 0.02), norm 0.036 < 0.05; keypoint 1: (10, 0) -> 0.1.
    per_keypoint, total = pck(pred, truth, size)
    assert per_keypoint[:2].tolist() == [1.0, 0.0] and math.isnan(per_keypoint[2]) and total == 0.5
    assert pck(pred, truth, size, threshold=0.2)[1] == 1.0
    rows = keypoint_errors(pred, truth, size, ["a", "b", "c"])
    assert rows[0]["mean_px"] == pytest.approx(5.0) and rows[1]["mean_px"] == pytest.approx(10.0)
    assert rows[0]["mean_norm"] == pytest.approx(math.hypot(0.03, 0.02)) and rows[1]["mean_norm"] == pytest.approx(0.1)
    assert rows[2]["labelled"] == 0 and math.isnan(rows[2]["mean_px"])
    table = keypoint_error_table(rows)
    assert table.row_count == 3 and table.columns[-1].header == "PCK@0.05"
    # A scalar normaliser per person scales both axes alike.
    # |(3, 4)| / 200 = 0.025 is within 0.05, |(10, 0)| / 200 = 0.05 is not.
    assert pck(pred, truth, torch.tensor([200.0]))[0][:2].tolist() == [1.0, 0.0]


def test_errors_name_the_argument() -> None:
    truth = torch.zeros(2, 17, 3)
    with pytest.raises(ValueError, match=r"pred must be \[N, K, 2\|3\] and truth \[N, K, 3\]"):
        pck(torch.zeros(2, 16, 2), truth, torch.ones(2))
    with pytest.raises(ValueError, match=r"normalizer must be \[N\] or \[N, 2\].*N = 2, got \(3,\)"):
        pck(torch.zeros(2, 17, 2), truth, torch.ones(3))
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        pck(torch.zeros(2, 17, 2), truth, torch.zeros(2))
    data = people_dataset()
    evaluator = PoseEvaluator(data, COCO_KEYPOINT_NAMES)
    with pytest.raises(ValueError, match=r"keypoints must be \[B, 17, 3\]"):
        evaluator.update(torch.tensor([1]), torch.zeros(1, 17, 2), torch.ones(1), torch.ones(1), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"score must have one entry per person \(1\)"):
        evaluator.update(torch.tensor([1]), torch.zeros(1, 17, 3), torch.ones(2), torch.ones(1), torch.zeros(1, 4))
    with pytest.raises(RuntimeError, match="call update"):
        evaluator.compute()
    with pytest.raises(ValueError, match="sigmas are needed for 5 keypoints"):
        PoseEvaluator(data, ["a"] * 5)
