"""DINO's criterion: the varifocal set loss by hand and equal to transformers' RT-DETR loss, the
IoU target as a constant, the denoising and encoder losses, empty targets, bad input."""

import math

import pytest
import torch

from sightkit.losses import DINOCriterion, varifocal_set_loss
from sightkit.ops import HungarianMatcher


def bce(p: float, q: float) -> float:
    return -(q * math.log(p) + (1 - q) * math.log(1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def one_image() -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]], list]:
    logits = torch.tensor([[[0.5, -1.0], [0.2, 0.3]]], dtype=torch.float64, requires_grad=True)
    # Query 0 is the target moved right by 0.1: xyxy (0.4, 0.3, 0.8, 0.7) against (0.3, 0.3, 0.7, 0.7).
    boxes = torch.tensor([[[0.6, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1]]], dtype=torch.float64, requires_grad=True)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]], dtype=torch.float64)}]
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    return logits, boxes, targets, indices


def test_varifocal_set_loss_by_hand() -> None:
    logits, boxes, targets, indices = one_image()
    losses = varifocal_set_loss(logits, boxes, targets, indices, num_boxes=2.0)
    # Intersection 0.3 x 0.4 = 0.12, union 0.16 + 0.16 - 0.12 = 0.2: IoU 0.6; the enclosing box
    # (0.3, 0.3, 0.8, 0.7) has area 0.2 = the union, so GIoU is 0.6 too.
    iou, alpha = 0.6, 0.75
    positive = iou * bce(sigmoid(-1.0), iou)  # query 0, class 1: weighted by q
    negatives = sum(alpha * sigmoid(x) ** 2 * bce(sigmoid(x), 0.0) for x in (0.5, 0.2, 0.3))
    # IoU and GIoU carry eps = 1e-7 in their denominators: a relative error below 1e-6.
    assert losses["loss_vfl"].item() == pytest.approx((positive + negatives) / 2, rel=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(0.1 / 2, rel=1e-12)
    assert losses["loss_giou"].item() == pytest.approx((1 - 0.6) / 2, rel=1e-6)


def test_the_iou_target_is_a_constant() -> None:
    """The classification loss trains the logits only; the boxes learn from L1 and GIoU."""
    logits, boxes, targets, indices = one_image()
    losses = varifocal_set_loss(logits, boxes, targets, indices, num_boxes=1.0)
    box_grad, logit_grad = torch.autograd.grad(losses["loss_vfl"], (boxes, logits), allow_unused=True)
    assert box_grad is None and logit_grad.abs().sum() > 0
    check = torch.autograd.gradcheck(
        lambda x: varifocal_set_loss(x, boxes.detach(), targets, indices, 1.0)["loss_vfl"], (logits,)
    )
    assert check


def test_equals_transformers_rt_detr_loss() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.loss.loss_rt_detr import RTDetrLoss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 3, generator=generator)
    boxes = torch.cat([torch.rand(2, 6, 2, generator=generator) * 0.5 + 0.25, torch.full((2, 6, 2), 0.3)], -1)
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.2], [0.6, 0.5, 0.2, 0.4]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.55, 0.35, 0.3]])},
    ]
    indices = HungarianMatcher(2.0, 5.0, 2.0, class_cost="focal")({"pred_logits": logits, "pred_boxes": boxes}, targets)
    peer = RTDetrLoss(transformers.RTDetrConfig(num_labels=3))
    peer_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    outputs = {"logits": logits, "pred_boxes": boxes}
    expected = {
        **peer.loss_labels_vfl(outputs, peer_targets, indices, 3.0),
        **peer.loss_boxes(outputs, peer_targets, indices, 3.0),
    }
    ours = varifocal_set_loss(logits, boxes, targets, indices, 3.0)
    for name in ("loss_vfl", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(ours[name], expected[name], atol=1e-6, rtol=1e-6)


def fake_outputs(aux_layers: int, with_dn: bool) -> dict:
    generator = torch.Generator().manual_seed(1)

    def prediction(queries: int) -> dict:
        boxes = torch.cat(
            [torch.rand(1, queries, 2, generator=generator) * 0.6 + 0.2, torch.full((1, queries, 2), 0.2)], -1
        )
        return {"pred_logits": torch.randn(1, queries, 3, generator=generator), "pred_boxes": boxes}

    outputs = {**prediction(4), "aux_outputs": [prediction(4) for _ in range(aux_layers)], "enc_outputs": prediction(4)}
    if with_dn:
        from sightkit.models import DenoisingQueries

        outputs["dn_outputs"] = [prediction(4) for _ in range(aux_layers + 1)]
        indices = [(torch.tensor([0, 2]), torch.tensor([0, 0]))]  # two groups of one positive + one negative
        outputs["dn_meta"] = DenoisingQueries(torch.zeros(1, 4), torch.zeros(1, 4, 4), torch.zeros(8, 8), indices, 2, 2)
    return outputs


TARGETS = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}]


def test_criterion_losses_and_weights() -> None:
    criterion = DINOCriterion(3, aux_layers=1)
    assert isinstance(criterion.matcher, HungarianMatcher) and criterion.matcher.class_cost == "focal"
    assert (criterion.matcher.cost_class, criterion.matcher.cost_bbox, criterion.matcher.cost_giou) == (2, 5, 2)
    suffixes = ["", "_0", "_enc", "_dn_0", "_dn_1"]
    assert set(criterion.weight_dict) == {f"loss_{n}{s}" for n in ("vfl", "bbox", "giou") for s in suffixes}
    assert criterion.weight_dict["loss_bbox_dn_1"] == 5 and criterion.weight_dict["loss_giou_enc"] == 2
    outputs = fake_outputs(aux_layers=1, with_dn=True)
    losses = criterion(outputs, TARGETS)
    # Denoising: the known pairs, normalised by boxes x groups; final layer and encoder: matched.
    dn = outputs["dn_outputs"][1]
    expected = varifocal_set_loss(dn["pred_logits"], dn["pred_boxes"], TARGETS, outputs["dn_meta"].positive_indices, 2)
    for name, value in expected.items():
        torch.testing.assert_close(losses[f"{name}_dn_1"], value)
    enc = outputs["enc_outputs"]
    expected = varifocal_set_loss(enc["pred_logits"], enc["pred_boxes"], TARGETS, criterion.matcher(enc, TARGETS), 1)
    torch.testing.assert_close(losses["loss_vfl_enc"], expected["loss_vfl"])
    # Without denoising outputs (evaluation) the same names, the denoising ones zero.
    evaluated = criterion(fake_outputs(aux_layers=1, with_dn=False), TARGETS)
    assert set(evaluated) == set(losses) and evaluated["loss_giou_dn_0"] == 0
    torch.testing.assert_close(evaluated["loss_vfl"], losses["loss_vfl"])


def test_empty_targets_give_zero_box_losses_that_keep_the_graph() -> None:
    logits = torch.randn(2, 5, 3, requires_grad=True)
    boxes = torch.rand(2, 5, 4).mul(0.3).add(0.2).requires_grad_()
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    losses = varifocal_set_loss(logits, boxes, empty, [(torch.zeros(0, dtype=torch.int64),) * 2] * 2, 1.0)
    assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0 and losses["loss_vfl"] > 0
    (losses["loss_bbox"] + losses["loss_giou"] + losses["loss_vfl"]).backward()
    assert boxes.grad is not None and boxes.grad.abs().sum() == 0 and logits.grad.abs().sum() > 0


def test_bad_input_is_an_error() -> None:
    criterion = DINOCriterion(3, aux_layers=1)
    outputs = fake_outputs(aux_layers=1, with_dn=False)
    with pytest.raises(ValueError, match=r"must have C = 4 classes \(sigmoid, no 'no object' class\), got 3"):
        DINOCriterion(4, aux_layers=1)(outputs, TARGETS)
    with pytest.raises(ValueError, match="must hold aux_layers = 2 dicts, got 1"):
        DINOCriterion(3, aux_layers=2)(outputs, TARGETS)
    with pytest.raises(ValueError, match="num_boxes must be > 0, got 0"):
        varifocal_set_loss(outputs["pred_logits"], outputs["pred_boxes"], TARGETS, [(torch.tensor([0]),) * 2], 0)
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        DINOCriterion(0)
    assert criterion(outputs, TARGETS)["loss_vfl"] > 0
