"""DETR postprocessing against hand-computed scores, labels and pixel boxes."""

import math

import pytest
import torch

from sightkit.models import DETRPostProcess, detr_postprocess


def example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # One image, 3 queries, 2 classes + "no object".
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(6.0), 0.0, math.log(3.0)], [0.0, math.log(8.0), 0.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 0.2], [0.1, 0.2, 0.2, 0.4]]])
    sizes = torch.tensor([[100, 200]])  # height 100, width 200
    return logits, boxes, sizes


def test_scores_labels_and_boxes_by_hand() -> None:
    logits, boxes, sizes = example()
    (result,) = detr_postprocess(logits, boxes, sizes)
    # Query 0: softmax (1/3, 1/3, 1/3) -> class 0 (first maximum), 1/3.
    # Query 1: exp = (6, 1, 3) / 10 -> class 0 with 0.6.
    # Query 2: exp = (1, 8, 1) / 10 -> class 1 with 0.8.
    torch.testing.assert_close(result["scores"], torch.tensor([0.8, 0.6, 1 / 3]))
    assert result["labels"].tolist() == [1, 0, 0]
    assert result["labels"].dtype == torch.int64
    # cxcywh relative -> xyxy pixels (x scaled by width 200, y by height 100).
    expected = torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 40.0, 100.0, 60.0], [0.0, 0.0, 200.0, 100.0]])
    torch.testing.assert_close(result["boxes"], expected)


def test_top_k_and_threshold() -> None:
    logits, boxes, sizes = example()
    (top1,) = detr_postprocess(logits, boxes, sizes, top_k=1)
    assert top1["labels"].tolist() == [1]
    torch.testing.assert_close(top1["boxes"], torch.tensor([[0.0, 0.0, 40.0, 40.0]]))
    (kept,) = detr_postprocess(logits, boxes, sizes, score_threshold=0.5)
    torch.testing.assert_close(kept["scores"], torch.tensor([0.8, 0.6]))
    (none,) = detr_postprocess(logits, boxes, sizes, score_threshold=0.9)
    assert none["scores"].numel() == none["labels"].numel() == 0 and none["boxes"].shape == (0, 4)


def test_each_image_uses_its_own_size() -> None:
    logits, boxes, _ = example()
    results = detr_postprocess(logits.expand(2, -1, -1), boxes.expand(2, -1, -1), torch.tensor([[100, 200], [10, 10]]))
    torch.testing.assert_close(results[1]["boxes"][0], torch.tensor([0.0, 0.0, 2.0, 4.0]))
    torch.testing.assert_close(results[0]["boxes"][0], torch.tensor([0.0, 0.0, 40.0, 40.0]))


def test_module_equals_function() -> None:
    logits, boxes, sizes = torch.randn(2, 5, 4), torch.rand(2, 5, 4), torch.tensor([[30, 40], [50, 20]])
    module_results = DETRPostProcess(top_k=3, score_threshold=0.1)({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    for got, expected in zip(module_results, detr_postprocess(logits, boxes, sizes, 3, 0.1), strict=True):
        for key in ("scores", "labels", "boxes"):
            torch.testing.assert_close(got[key], expected[key])


def test_bad_inputs_are_errors() -> None:
    logits, boxes, sizes = example()
    with pytest.raises(ValueError, match=r"pred_logits must have shape \[B, Q, C \+ 1\]"):
        detr_postprocess(logits[0], boxes, sizes)
    with pytest.raises(ValueError, match=r"pred_boxes must have shape \[B, Q, 4\] = \[1, 3, 4\], got \(1, 2, 4\)"):
        detr_postprocess(logits, boxes[:, :2], sizes)
    with pytest.raises(ValueError, match=r"image_sizes must have shape \[B, 2\] = \[1, 2\] as \(height, width\)"):
        detr_postprocess(logits, boxes, torch.tensor([100, 200]))
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        detr_postprocess(logits, boxes, sizes, top_k=0)
