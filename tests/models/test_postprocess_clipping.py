"""Every detector postprocess clips its boxes to the image: a box that reaches past the border
comes back cut at the border, in the pixels of the size it was asked for."""

import math

import torch

from sightkit.models import detr_postprocess, dino_postprocess, vfnet_postprocess

# One image of height 100 and width 200; two relative cxcywh boxes, each past two borders.
SIZES = torch.tensor([[100, 200]])
BOXES = torch.tensor([[[0.05, 0.1, 0.3, 0.4], [0.9, 0.95, 0.4, 0.3]]])
# By hand: box 0 spans x in [-0.1, 0.2], y in [-0.1, 0.3] -> [0, 0, 0.2 * 200, 0.3 * 100];
# box 1 spans x in [0.7, 1.1], y in [0.8, 1.1] -> [0.7 * 200, 0.8 * 100, 200, 100].
CLIPPED = torch.tensor([[0.0, 0.0, 40.0, 30.0], [140.0, 80.0, 200.0, 100.0]])


def test_detr_postprocess_clips_to_the_image() -> None:
    # Softmax over (class 0, class 1, no object): query 0 scores 0.6 for class 1, query 1 0.5 for class 0.
    logits = torch.tensor([[[math.log(3.0), math.log(6.0), 0.0], [math.log(5.0), math.log(4.0), 0.0]]])
    (result,) = detr_postprocess(logits, BOXES, SIZES)
    torch.testing.assert_close(result["scores"], torch.tensor([0.6, 0.5]))
    torch.testing.assert_close(result["boxes"], CLIPPED)


def test_dino_postprocess_clips_to_the_image() -> None:
    logits = torch.tensor([[[3.0, -9.0], [-9.0, 2.0]]])  # query 0 is class 0, query 1 class 1
    (result,) = dino_postprocess(logits, BOXES, SIZES, top_k=2)
    assert result["labels"].tolist() == [0, 1]
    torch.testing.assert_close(result["boxes"], CLIPPED)


def test_vfnet_postprocess_clips_to_the_image() -> None:
    logits = torch.tensor([[[3.0, -9.0], [-9.0, 2.0]]])
    (result,) = vfnet_postprocess(logits, BOXES, SIZES)
    assert result["labels"].tolist() == [0, 1]
    torch.testing.assert_close(result["boxes"], CLIPPED)


def test_a_box_wholly_outside_collapses_onto_the_border() -> None:
    # DETR keeps one detection per query, so a box left of the image becomes a zero-width box at x = 0.
    boxes = torch.tensor([[[-0.5, 0.5, 0.2, 0.2]]])
    (result,) = detr_postprocess(torch.tensor([[[1.0, 0.0]]]), boxes, SIZES)
    torch.testing.assert_close(result["boxes"], torch.tensor([[0.0, 40.0, 0.0, 60.0]]))
