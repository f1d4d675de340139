"""DETR's set criterion against hand computations, its gradient (float64 gradcheck), empty
targets, the all-reduced box count under torch.distributed, and its error messages."""

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sightkit.losses import SetCriterion, set_prediction_loss


def two_queries_one_target() -> tuple[dict, list[dict]]:
    """Two queries, classes {0, 1} + "no object"; one target of class 0.

    Query 0: softmax (3/5, 1/5, 1/5), box cxcywh (0.5, 0.5, 0.4, 0.2) = xyxy (0.3, 0.4, 0.7, 0.6).
    Query 1: softmax (1/4, 1/4, 1/2), box cxcywh (0.2, 0.2, 0.2, 0.2), far from the target.
    Target: class 0, cxcywh (0.5, 0.5, 0.4, 0.4) = xyxy (0.3, 0.3, 0.7, 0.7).
    """
    logits = torch.tensor([[[math.log(3.0), 0.0, 0.0], [0.0, 0.0, math.log(2.0)]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.2], [0.2, 0.2, 0.2, 0.2]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


# Query 0 matches. CE: weight 1 for query 0 (class 0, p = 3/5), 0.1 for query 1 ("no object",
# p = 1/2), divided by the weight sum 1.1. L1: |0.2 - 0.4| on the height = 0.2 for N = 1.
# GIoU: the prediction (area 0.08) lies inside the target (area 0.16, also the enclosing box):
# IoU = 0.5, no enclosing-box penalty, loss 1 - 0.5.
EXPECTED = {
    "loss_ce": (math.log(5 / 3) + 0.1 * math.log(2.0)) / 1.1,
    "loss_bbox": 0.2,
    "loss_giou": 0.5,
}


def test_hand_computed_losses() -> None:
    outputs, targets = two_queries_one_target()
    losses = SetCriterion(num_classes=2)(outputs, targets)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou", "class_error"}
    for name, value in EXPECTED.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-5), name
    assert losses["class_error"].item() == 0.0


def test_matching_is_redone_for_each_auxiliary_output() -> None:
    outputs, targets = two_queries_one_target()
    # The auxiliary layer has the two queries swapped: query 1 must be matched there. Reusing the
    # final layer's matching (query 0) would score the far box and the wrong class instead.
    outputs["aux_outputs"] = [
        {"pred_logits": outputs["pred_logits"].flip(1), "pred_boxes": outputs["pred_boxes"].flip(1)}
    ]
    criterion = SetCriterion(num_classes=2, aux_layers=1)
    losses = criterion(outputs, targets)
    for name, value in EXPECTED.items():
        assert losses[f"{name}_0"].item() == pytest.approx(value, rel=1e-5), name
    assert criterion.weight_dict == {
        "loss_ce": 1.0,
        "loss_bbox": 5.0,
        "loss_giou": 2.0,
        "loss_ce_0": 1.0,
        "loss_bbox_0": 5.0,
        "loss_giou_0": 2.0,
    }


def test_class_error_counts_wrong_matched_labels() -> None:
    outputs, targets = two_queries_one_target()
    targets[0]["labels"] = torch.tensor([1])  # query 0 still matches on its box, but predicts class 0
    assert SetCriterion(num_classes=2)(outputs, targets)["class_error"].item() == 100.0


def test_box_losses_are_divided_by_the_number_of_target_boxes() -> None:
    logits = torch.zeros(2, 3, 3)
    boxes = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]]).expand(2, 3, 4)
    targets = [
        {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.2, 0.2, 0.2, 0.3], [0.8, 0.8, 0.2, 0.2]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.55, 0.5, 0.2, 0.2]])},
    ]
    losses = SetCriterion(num_classes=2)({"pred_logits": logits, "pred_boxes": boxes}, targets)
    # Matched: image 0 queries 0 and 2 (L1 0.1 and 0), image 1 query 1 (L1 0.05); N = 3.
    assert losses["loss_bbox"].item() == pytest.approx((0.1 + 0.0 + 0.05) / 3, rel=1e-5)
    # GIoU losses by hand: 1 - 0.04/0.06 (nested boxes); 0; two 0.2-wide boxes offset by 0.05
    # overlap 0.15 x 0.2 = 0.03 of a 0.05 union, enclosing 0.25 x 0.2 = 0.05.
    assert losses["loss_giou"].item() == pytest.approx((1 / 3 + 0.0 + (1 - 0.6)) / 3, rel=1e-5)


def test_images_without_targets() -> None:
    logits = torch.randn(2, 4, 3, requires_grad=True)
    boxes = torch.rand(2, 4, 4, requires_grad=True)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    losses = SetCriterion(num_classes=2)({"pred_logits": logits, "pred_boxes": boxes}, [empty, empty])
    # Every query should say "no object" (class 2); all weights are equal, so a plain mean.
    expected_ce = F.cross_entropy(logits.detach().reshape(-1, 3), torch.full((8,), 2))
    torch.testing.assert_close(losses["loss_ce"], expected_ce)
    assert losses["loss_bbox"].item() == losses["loss_giou"].item() == losses["class_error"].item() == 0.0
    # The box losses are zeros that still reach the boxes, so a training step does not break.
    (losses["loss_bbox"] + losses["loss_giou"]).backward()
    assert boxes.grad is not None and boxes.grad.eq(0).all()


def test_gradcheck_float64() -> None:
    logits = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor(
        [[[0.3, 0.4, 0.2, 0.3], [0.6, 0.5, 0.3, 0.2], [0.5, 0.5, 0.1, 0.1]]] * 2, dtype=torch.float64
    ).requires_grad_()
    targets = [
        {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.35, 0.47, 0.25, 0.2], [0.62, 0.56, 0.2, 0.3]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.52, 0.45, 0.15, 0.12]])},
    ]
    # No coordinate of a matched pair coincides: L1 and the min/max of GIoU are smooth there.
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 1])), (torch.tensor([2]), torch.tensor([0]))]

    def total(logits: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        losses = set_prediction_loss(logits, boxes, targets, indices, num_boxes=3.0)
        return losses["loss_ce"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]

    assert torch.autograd.gradcheck(total, (logits, boxes))


def test_half_precision_inputs_give_float32_losses() -> None:
    outputs, targets = two_queries_one_target()
    half = {key: value.half() for key, value in outputs.items()}
    losses = SetCriterion(num_classes=2)(half, targets)
    for name, value in EXPECTED.items():
        assert losses[name].dtype == torch.float32
        assert losses[name].item() == pytest.approx(value, rel=2e-3), name


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        # Rank 0 holds 3 target boxes, rank 1 holds 1: both divide by the mean, N = 2.
        count = 3 if rank == 0 else 1
        boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).expand(1, 4, 4).clone()
        targets = [
            {"labels": torch.zeros(count, dtype=torch.int64), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]] * count)}
        ]
        losses = SetCriterion(num_classes=1)({"pred_logits": torch.zeros(1, 4, 2), "pred_boxes": boxes}, targets)
        torch.save(losses["loss_bbox"], Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes that each import torch
def test_number_of_boxes_is_averaged_over_processes(tmp_path: Path) -> None:
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    # Each matched box is 0.1 off in height: rank 0 sums 3 x 0.1, rank 1 sums 0.1; both divide by 2.
    assert torch.load(tmp_path / "rank0.pt").item() == pytest.approx(0.3 / 2, rel=1e-5)
    assert torch.load(tmp_path / "rank1.pt").item() == pytest.approx(0.1 / 2, rel=1e-5)


def test_bad_inputs_are_errors() -> None:
    outputs, targets = two_queries_one_target()
    with pytest.raises(ValueError, match=r"must have C \+ 1 = 4 classes .* got 3"):
        SetCriterion(num_classes=3)(outputs, targets)
    with pytest.raises(ValueError, match=r"outputs\['aux_outputs'\] must hold aux_layers = 2 dicts, got 0"):
        SetCriterion(num_classes=2, aux_layers=2)(outputs, targets)
    with pytest.raises(ValueError, match="eos_coef must lie in"):
        SetCriterion(num_classes=2, eos_coef=1.5)
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        SetCriterion(num_classes=0)
    with pytest.raises(ValueError, match="num_boxes must be > 0, got 0"):
        set_prediction_loss(outputs["pred_logits"], outputs["pred_boxes"], targets, [], num_boxes=0)
    with pytest.raises(ValueError, match="need one target dict and one index pair per image: B = 1"):
        set_prediction_loss(outputs["pred_logits"], outputs["pred_boxes"], targets, [], num_boxes=1)
