"""The VarifocalNet criterion: the IoU target of the refined box at the object's class, the
IoU-weighted GIoU losses and their normalisers (also across two gloo processes), the
focal-loss ablation, an image without objects, and clear errors. Outputs are made by hand on
a small grid of locations."""

from pathlib import Path

import pytest
import torch
from gloo_launch import launch

from sightkit.losses import VFNetCriterion, generalized_box_iou_loss, sigmoid_focal_loss, varifocal_loss
from sightkit.models.vfnet import level_anchors
from sightkit.ops import atss_assign, elementwise_box_iou

NUM_CLASSES = 3
SIZES, STRIDES = [(8, 8), (4, 4)], [8, 16]


def grid() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    points, anchors = level_anchors(SIZES, STRIDES, 4.0, torch.device("cpu"))
    return points, anchors, [h * w for h, w in SIZES]


def outputs_for(batch: int, refine: bool = True, seed: int = 0) -> dict:
    """Random logits and boxes around each location (a 4..20 pixel reach on every side)."""
    generator = torch.Generator().manual_seed(seed)
    points, anchors, level_sizes = grid()
    n = points.shape[0]

    def boxes() -> torch.Tensor:
        reach = 4 + 16 * torch.rand(batch, n, 4, generator=generator, dtype=torch.float64)
        return torch.cat((points - reach[..., :2], points + reach[..., 2:]), -1).requires_grad_()

    outputs = {
        "pred_logits": torch.randn(batch, n, NUM_CLASSES, generator=generator, dtype=torch.float64).requires_grad_(),
        "pred_boxes_init": boxes(),
        "anchors": anchors,
        "level_sizes": level_sizes,
    }
    if refine:
        outputs["pred_boxes_refine"] = boxes()
    return outputs


TARGETS = [
    {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[6.0, 10, 30, 28], [34, 30, 60, 62]])},
    {"labels": torch.tensor([1]), "boxes": torch.tensor([[16.0, 4, 40, 44]])},
]


def expected_losses(outputs: dict, targets: list[dict], cls_loss: str = "varifocal") -> dict[str, torch.Tensor]:
    """The paper's losses built from the library's tested pieces, one image at a time."""
    logits = outputs["pred_logits"]
    cls_targets = torch.zeros_like(logits)
    sums = {"loss_bbox": 0.0, "loss_bbox_refine": 0.0}
    weights = {"loss_bbox": 0.0, "loss_bbox_refine": 0.0}
    num_pos = 0
    for b, target in enumerate(targets):
        assigned = atss_assign(outputs["anchors"], outputs["level_sizes"], target["boxes"])
        positive = torch.nonzero(assigned >= 0).flatten()
        num_pos += len(positive)
        gt_boxes = target["boxes"][assigned[positive]].double()
        labels = target["labels"][assigned[positive]]
        q = None
        for key, name in (("pred_boxes_init", "loss_bbox"), ("pred_boxes_refine", "loss_bbox_refine")):
            if key in outputs:
                boxes = outputs[key][b, positive]
                q = elementwise_box_iou(boxes.detach(), gt_boxes).clamp(min=1e-6)
                sums[name] = sums[name] + (q * generalized_box_iou_loss(boxes, gt_boxes)).sum()
                weights[name] += q.sum().item()
        cls_targets[b, positive, labels] = q if cls_loss == "varifocal" else 1.0
    if cls_loss == "varifocal":
        cls = varifocal_loss(logits, cls_targets, alpha=0.75, gamma=2.0, reduction="sum")
    else:
        cls = sigmoid_focal_loss(logits, cls_targets, alpha=0.25, gamma=2.0, reduction="sum")
    losses = {"loss_cls": cls / max(num_pos, 1)}
    for name in sums:
        if weights[name]:
            losses[name] = sums[name] / max(weights[name], 1.0)
    return losses


@pytest.mark.parametrize("cls_loss", ["varifocal", "focal"])
@pytest.mark.parametrize("refine", [True, False])
def test_losses_equal_the_paper_built_from_tested_pieces(cls_loss: str, refine: bool) -> None:
    outputs = outputs_for(2, refine=refine)
    got = VFNetCriterion(NUM_CLASSES, cls_loss=cls_loss)(outputs, TARGETS)
    expected = expected_losses(outputs, TARGETS, cls_loss)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name].double(), expected[name].double(), rtol=1e-5, atol=1e-7)


def test_a_perfect_box_makes_an_iou_target_of_one() -> None:
    """Boxes equal to their object: GIoU loss 0, and the varifocal target of each positive is 1
    at the object's class (and 0 at the others)."""
    outputs = outputs_for(1)
    target = [TARGETS[0]]
    assigned = atss_assign(outputs["anchors"], outputs["level_sizes"], target[0]["boxes"])
    positive = torch.nonzero(assigned >= 0).flatten()
    assert len(positive) >= 2
    with torch.no_grad():
        for key in ("pred_boxes_init", "pred_boxes_refine"):
            outputs[key][0, positive] = target[0]["boxes"][assigned[positive]].double()
    losses = VFNetCriterion(NUM_CLASSES)(outputs, target)
    # 0 up to the eps of IoU = inter / (union + 1e-7).
    assert losses["loss_bbox"].item() == pytest.approx(0, abs=1e-8)
    assert losses["loss_bbox_refine"].item() == pytest.approx(0, abs=1e-8)
    one_hot = torch.zeros(1, outputs["pred_logits"].shape[1], NUM_CLASSES, dtype=torch.float64)
    one_hot[0, positive, target[0]["labels"][assigned[positive]]] = 1.0
    expected = varifocal_loss(outputs["pred_logits"], one_hot, reduction="sum") / len(positive)
    torch.testing.assert_close(losses["loss_cls"].double(), expected)


def test_an_image_without_objects() -> None:
    """Every score is a negative: the classification loss is positive, the box losses exactly 0
    with a gradient path, and nothing is NaN."""
    outputs = outputs_for(1)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = VFNetCriterion(NUM_CLASSES)(outputs, empty)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_bbox_refine"].item() == 0.0
    total = losses["loss_cls"] + 1.5 * losses["loss_bbox"] + 2.0 * losses["loss_bbox_refine"]
    total.backward()
    for key in ("pred_logits", "pred_boxes_init", "pred_boxes_refine"):
        assert torch.isfinite(outputs[key].grad).all()
    assert not outputs["pred_boxes_init"].grad.any()
    # Negatives only: the varifocal loss of all-zero targets, divided by max(0 positives, 1).
    expected = varifocal_loss(outputs["pred_logits"], torch.zeros_like(outputs["pred_logits"]), reduction="sum")
    torch.testing.assert_close(losses["loss_cls"].double(), expected.double())


def test_errors_name_the_problem() -> None:
    outputs = outputs_for(2)
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] must lie in \[0, 2\], got \[3\]"):
        VFNetCriterion(NUM_CLASSES)(outputs, [TARGETS[0], {"labels": torch.tensor([3]), "boxes": torch.zeros(1, 4)}])
    with pytest.raises(ValueError, match="pred_logits must have 4 classes in its last axis, got 3"):
        VFNetCriterion(4)(outputs, TARGETS)
    with pytest.raises(ValueError, match=r"targets must hold one dict per image \(2\), got 1"):
        VFNetCriterion(NUM_CLASSES)(outputs, TARGETS[:1])
    with pytest.raises(ValueError, match="cls_loss must be one of"):
        VFNetCriterion(NUM_CLASSES, cls_loss="ce")


@pytest.mark.slow
def test_two_gloo_processes_average_to_the_whole_batch(tmp_path: Path) -> None:
    """Each rank sees one image; with the normalisers averaged over the ranks, the mean of the
    ranks' losses (what DDP's gradient averaging optimises) is the loss of the whole batch."""
    launch(Path(__file__).parent / "vfnet_ddp_worker.py", tmp_path)
    ranks = torch.load(tmp_path / "ranks.pt", weights_only=True)
    whole = VFNetCriterion(NUM_CLASSES)(outputs_for(2), TARGETS)
    for name, value in whole.items():
        torch.testing.assert_close((ranks[0][name] + ranks[1][name]) / 2, value.detach())
