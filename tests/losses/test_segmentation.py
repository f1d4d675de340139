"""Segmentation losses: cross-entropy against torch's with ignored pixels and class weights,
Dice against hand values, empty and all-ignored batches, gradcheck, half precision, the
named-loss module and input errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from sightkit.losses import SegmentationLoss, dice_loss, segmentation_cross_entropy


def _batch(classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(2, classes, 5, 6)
    target = torch.randint(0, classes, (2, 5, 6))
    target[0, :2] = 255
    return logits, target


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_equals_torch_with_ignored_pixels(reduction: str) -> None:
    logits, target = _batch()
    expected = F.cross_entropy(logits, target, ignore_index=255, reduction=reduction)
    torch.testing.assert_close(segmentation_cross_entropy(logits, target, reduction=reduction), expected)


def test_cross_entropy_equals_torch_with_class_weights() -> None:
    logits, target = _batch()
    weight = torch.tensor([0.5, 2.0, 1.0, 0.1])
    expected = F.cross_entropy(logits, target, weight, ignore_index=255)
    torch.testing.assert_close(segmentation_cross_entropy(logits, target, weight), expected)


def test_cross_entropy_by_hand() -> None:
    # Two pixels, logits (0, log 3): p = (1/4, 3/4). Pixel 0 is class 1, pixel 1 is ignored.
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1).expand(1, 2, 1, 2).contiguous()
    target = torch.tensor([[[1, 255]]])
    assert segmentation_cross_entropy(logits, target).item() == pytest.approx(-math.log(0.75))


def test_all_ignored_gives_a_zero_with_a_gradient_where_torch_gives_nan() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255)
    assert torch.isnan(F.cross_entropy(logits, target, ignore_index=255))
    for loss in (segmentation_cross_entropy(logits, target), dice_loss(logits, target)):
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_empty_batch() -> None:
    logits = torch.zeros(0, 3, 4, 4, requires_grad=True)
    target = torch.zeros(0, 4, 4, dtype=torch.int64)
    assert segmentation_cross_entropy(logits, target).item() == 0.0
    assert dice_loss(logits, target).item() == 0.0
    assert dice_loss(logits, target, reduction="none").tolist() == [0.0, 0.0, 0.0]


def test_dice_by_hand() -> None:
    # Pixels (class probabilities): (0.8, 0.2) of class 0, (0.3, 0.7) of class 1, and an ignored pixel.
    probs = torch.tensor([[0.8, 0.3, 0.5], [0.2, 0.7, 0.5]])
    logits = probs.log().view(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    # class 0: intersection 0.8, sum p 1.1, sum t 1; class 1: intersection 0.7, sum p 0.9, sum t 1.
    expected = [1 - (2 * 0.8 + 1) / (1.1 + 1 + 1), 1 - (2 * 0.7 + 1) / (0.9 + 1 + 1)]
    assert dice_loss(logits, target, reduction="none").tolist() == pytest.approx(expected, abs=1e-6)
    assert dice_loss(logits, target).item() == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert dice_loss(logits, target, smooth=1e-6, reduction="sum").item() == pytest.approx(
        (1 - 1.6 / 2.1) + (1 - 1.4 / 1.9), abs=1e-5
    )


def test_dice_of_a_perfect_confident_prediction_is_zero() -> None:
    target = torch.randint(0, 3, (2, 4, 4))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 100
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert segmentation_cross_entropy(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_gradcheck() -> None:
    logits = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 3, 2))
    target[1, 0] = 255
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, target, reduction="none"), (logits,))
    assert torch.autograd.gradcheck(lambda x: segmentation_cross_entropy(x, target), (logits,))


def test_extreme_logits_stay_finite() -> None:
    logits = torch.tensor([100.0, -100.0]).view(1, 2, 1, 1).repeat(1, 1, 2, 2).requires_grad_()
    target = torch.tensor([[[1, 1], [0, 255]]])
    loss = segmentation_cross_entropy(logits, target) + dice_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_half_precision_is_computed_in_float32() -> None:
    logits, target = _batch()
    for loss in (segmentation_cross_entropy, dice_loss):
        low = loss(logits.to(torch.bfloat16), target)
        assert low.dtype == torch.float32
        torch.testing.assert_close(low, loss(logits.to(torch.bfloat16).float(), target))


def test_module_returns_named_losses_and_their_weights() -> None:
    logits, target = _batch()
    module = SegmentationLoss(dice_weight=0.5, class_weights=[1.0, 2.0, 1.0, 1.0])
    losses = module(logits, target)
    weight = torch.tensor([1.0, 2.0, 1.0, 1.0])
    torch.testing.assert_close(losses["loss_ce"], segmentation_cross_entropy(logits, target, weight))
    torch.testing.assert_close(losses["loss_dice"], dice_loss(logits, target))
    assert module.weight_dict == {"loss_ce": 1.0, "loss_dice": 0.5}
    plain = SegmentationLoss()
    assert set(plain(logits, target)) == {"loss_ce"} and plain.weight_dict == {"loss_ce": 1.0}


def test_errors_name_the_argument() -> None:
    logits, target = _batch()
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\) or ignore_index=255, got values in"):
        segmentation_cross_entropy(logits, target.masked_fill(target == 3, 7))
    with pytest.raises(ValueError, match=r"target must have shape \[B, H, W\] = \(2, 5, 6\).*got \(2, 5, 5\)"):
        dice_loss(logits, target[..., :5])
    with pytest.raises(TypeError, match="target must be an integer tensor of class indices"):
        dice_loss(logits, target.float())
    with pytest.raises(TypeError, match=r"logits must be a floating-point tensor of shape \[B, C, H, W\]"):
        segmentation_cross_entropy(logits[0], target)
    with pytest.raises(ValueError, match="reduction must be one of"):
        dice_loss(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="smooth must be > 0"):
        dice_loss(logits, target, smooth=0)
    with pytest.raises(ValueError, match=r"weight must be a \[C\] = \[4\] tensor"):
        segmentation_cross_entropy(logits, target, torch.ones(3))
    with pytest.raises(ValueError, match="dice_weight must be >= 0"):
        SegmentationLoss(dice_weight=-1)
