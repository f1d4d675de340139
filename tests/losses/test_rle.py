"""rle_loss / RLELoss: hand values on one keypoint, the three forms against transcriptions of
the official code and mmpose, masking, reductions, gradcheck, negativity, errors."""

import math

import pytest
import torch
from torch import nn

from sightkit.losses import RLELoss, rle_loss
from sightkit.nn import RealNVP

LOG_2PI = math.log(2 * math.pi)


def identity_flow(dtype: torch.dtype = torch.float64) -> RealNVP:
    flow = RealNVP().to(dtype)
    for parameter in flow.parameters():
        nn.init.zeros_(parameter)
    return flow


def random_flow(dtype: torch.dtype = torch.float64) -> RealNVP:
    torch.manual_seed(3)
    return RealNVP(init_gain=1.0).to(dtype)


def one_keypoint() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # mu = (0.3, -0.2), y = (0.1, 0.1), sigma = (0.5, 0.25): e = (0.4, -1.2).
    pred = torch.tensor([[[0.3, -0.2]]], dtype=torch.float64)
    target = torch.tensor([[[0.1, 0.1]]], dtype=torch.float64)
    sigma = torch.tensor([[[0.5, 0.25]]], dtype=torch.float64)
    return pred, sigma, target


def test_paper_form_by_hand_on_one_keypoint() -> None:
    pred, sigma, target = one_keypoint()
    log_sigma = math.log(0.5) + math.log(0.25)
    minus_log_g = 0.5 * (0.4**2 + 1.2**2) + LOG_2PI  # identity flow: G = N(0, I)
    laplace = 2 * math.log(2) + 0.4 + 1.2  # -log(exp(-|e|) / 2), per coordinate
    gaussian = LOG_2PI + 0.5 * (0.4**2 + 1.2**2)  # -log N(e; 0, 1), per coordinate
    flow = identity_flow()
    got = rle_loss(pred, sigma, target, flow, reduction="none")
    torch.testing.assert_close(got, torch.tensor([[log_sigma + minus_log_g + laplace]], dtype=torch.float64))
    got = rle_loss(pred, sigma, target, flow, q="gaussian", reduction="sum")
    torch.testing.assert_close(got, torch.tensor(log_sigma + minus_log_g + gaussian, dtype=torch.float64))


def test_official_and_mmpose_forms_by_hand_on_one_keypoint() -> None:
    pred, sigma, target = one_keypoint()
    flow = identity_flow()
    log_sigma = math.log(0.5) + math.log(0.25)
    minus_log_g = 0.5 * (0.4**2 + 1.2**2) + LOG_2PI
    # official: sum_d (log s_d - log G) + sum_d (log(s_d sqrt(2 pi)) + |r_d| / (sqrt(2) s_d)), r = (0.2, -0.3)
    official = (log_sigma + 2 * minus_log_g) + (log_sigma + LOG_2PI + 0.2 / (math.sqrt(2) * 0.5))
    official += 0.3 / (math.sqrt(2) * 0.25)
    got = rle_loss(pred, sigma, target, flow, form="official", reduction="sum")
    torch.testing.assert_close(got, torch.tensor(official, dtype=torch.float64))
    # mmpose laplace: sum_d (log s_d - log G) + sum_d (log(2 s_d) + |e_d|)
    mmpose = (log_sigma + 2 * minus_log_g) + (log_sigma + 2 * math.log(2) + 0.4 + 1.2)
    got = rle_loss(pred, sigma, target, flow, form="mmpose", reduction="sum")
    torch.testing.assert_close(got, torch.tensor(mmpose, dtype=torch.float64))


def official_transcription(pred, sigma, target, weight, flow):
    """Jeff-sjtu/res-loglikelihood-regression: RegressFlow's nf_loss and RLELoss, written out."""
    bar_mu = (pred - target) / sigma
    log_phi = flow.log_prob(bar_mu.reshape(-1, 2)).reshape(*pred.shape[:2], 1)
    nf_loss = torch.log(sigma) - log_phi
    w = weight[..., None].expand_as(pred)
    nf_loss = nf_loss * w[:, :, :1]
    amp = 1 / math.sqrt(2 * math.pi)
    log_q = torch.log(sigma / amp) + torch.abs(target - pred) / (math.sqrt(2) * sigma + 1e-9)
    return (nf_loss + log_q * w).sum() / len(pred)


def mmpose_transcription(pred, sigma, target, weight, flow, q_dis):
    """mmpose.models.losses.RLELoss (use_target_weight=True), written out."""
    error = (pred - target) / (sigma + 1e-9)
    log_phi = flow.log_prob(error.reshape(-1, 2)).reshape(*pred.shape[:2], 1)
    nf_loss = torch.log(sigma) - log_phi
    if q_dis == "laplace":
        loss_q = torch.log(sigma * 2) + torch.abs(error)
    else:
        loss_q = torch.log(sigma * math.sqrt(2 * math.pi)) + 0.5 * error**2
    return ((nf_loss + loss_q) * weight[..., None]).mean()


def batch(dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 17, 2, generator=g, dtype=dtype) - 0.5
    target = pred + 0.1 * torch.randn(4, 17, 2, generator=g, dtype=dtype)
    sigma = torch.rand(4, 17, 2, generator=g, dtype=dtype) * 0.3 + 0.05
    weight = (torch.rand(4, 17, generator=g) > 0.3).to(dtype)
    return pred, sigma, target, weight


def test_official_form_equals_the_official_code() -> None:
    pred, sigma, target, weight = batch()
    flow = random_flow()
    ours = rle_loss(pred, sigma, target, flow, weight, form="official", reduction="sum") / len(pred)
    torch.testing.assert_close(ours, official_transcription(pred, sigma, target, weight, flow))


@pytest.mark.parametrize("q", ["laplace", "gaussian"])
def test_mmpose_form_equals_mmpose(q: str) -> None:
    pred, sigma, target, weight = batch()
    flow = random_flow()
    ours = rle_loss(pred, sigma, target, flow, weight, q=q, form="mmpose", reduction="sum") / pred.numel()
    torch.testing.assert_close(ours, mmpose_transcription(pred, sigma, target, weight, flow, q))


def test_paper_form_is_the_negative_log_density() -> None:
    """Eq. 8: -log G(e) - sum log Q(e_d) + sum log sigma_d, with G the flow's density."""
    pred, sigma, target, _ = batch()
    flow = random_flow()
    e = (pred - target) / sigma
    expected = -flow.log_prob(e) + (math.log(2) + e.abs()).sum(-1) + sigma.log().sum(-1)
    torch.testing.assert_close(rle_loss(pred, sigma, target, flow, reduction="none"), expected)


def test_masked_keypoints_contribute_nothing() -> None:
    pred, sigma, target, weight = batch()
    flow = random_flow()
    pred.requires_grad_()
    far = target.clone()
    far[weight == 0] = 1e6  # an unlabelled keypoint's target can be anything
    loss = rle_loss(pred, sigma, far, flow, weight)
    visible = weight > 0
    expected = rle_loss(pred[visible][None], sigma[visible][None], target[visible][None], flow)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~visible] == 0).all() and (pred.grad[visible] != 0).all()


def test_reductions() -> None:
    pred, sigma, target, weight = batch()
    weight[0, 0] = 0.5
    flow = random_flow()
    per_keypoint = rle_loss(pred, sigma, target, flow, reduction="none")
    weighted = rle_loss(pred, sigma, target, flow, weight, reduction="none")
    torch.testing.assert_close(weighted, per_keypoint * weight)
    torch.testing.assert_close(rle_loss(pred, sigma, target, flow, weight, reduction="sum"), weighted.sum())
    torch.testing.assert_close(rle_loss(pred, sigma, target, flow, weight), weighted.sum() / weight.sum())
    torch.testing.assert_close(rle_loss(pred, sigma, target, flow), per_keypoint.mean())


def test_no_weight_left_and_empty_input_give_a_zero_with_a_graph() -> None:
    pred, sigma, target, weight = batch()
    flow = random_flow()
    pred.requires_grad_()
    loss = rle_loss(pred, sigma, target, flow, torch.zeros_like(weight))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (pred.grad == 0).all()
    empty = torch.zeros(0, 17, 2, dtype=torch.float64, requires_grad=True)
    loss = rle_loss(empty, empty.detach() + 1, empty.detach(), flow)
    assert loss.item() == 0.0 and loss.requires_grad


def test_the_loss_goes_negative_for_confident_correct_predictions() -> None:
    pred = torch.zeros(1, 1, 2, dtype=torch.float64)
    sigma = torch.full((1, 1, 2), 0.01, dtype=torch.float64)
    # 2 log 0.01 + log(2 pi) + 2 log 2 = -5.99: a density, not a distance.
    expected = 2 * math.log(0.01) + LOG_2PI + 2 * math.log(2)
    torch.testing.assert_close(rle_loss(pred, sigma, pred, identity_flow()), torch.tensor(expected).double())


@pytest.mark.parametrize("form", ["paper", "official", "mmpose"])
def test_gradcheck(form: str) -> None:
    pred, sigma, target, weight = (t[:2, :3] for t in batch())
    flow = random_flow()
    pred.requires_grad_()
    sigma.requires_grad_()
    assert torch.autograd.gradcheck(lambda p, s: rle_loss(p, s, target, flow, weight, form=form), (pred, sigma))
    # The flow's parameters get theirs through the same expression (one weight matrix checked).
    module = LossOfFlow(flow, target, weight, form)
    first = flow.s[0][0].weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w: torch.func.functional_call(module, {"flow.s.0.0.weight": w}, (pred.detach(), sigma.detach())),
        (first,),
    )


class LossOfFlow(nn.Module):
    def __init__(self, flow: RealNVP, target: torch.Tensor, weight: torch.Tensor, form: str) -> None:
        super().__init__()
        self.flow, self.target, self.weight, self.form = flow, target, weight, form

    def forward(self, pred: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return rle_loss(pred, sigma, self.target, self.flow, self.weight, form=self.form)


def test_half_precision_inputs_are_computed_in_float32() -> None:
    pred, sigma, target, weight = batch(torch.float32)
    flow = random_flow(torch.float32)
    got = rle_loss(pred.half(), sigma.half(), target.half(), flow, weight)
    assert got.dtype == torch.float32
    expected = rle_loss(pred.half().float(), sigma.half().float(), target.half().float(), flow, weight)
    torch.testing.assert_close(got, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_autocast = rle_loss(pred, sigma, target, flow, weight)
    torch.testing.assert_close(in_autocast, rle_loss(pred, sigma, target, flow, weight))


def test_module_equals_function() -> None:
    pred, sigma, target, weight = batch()
    flow = random_flow()
    for form, q in (("paper", "gaussian"), ("official", "laplace"), ("mmpose", "laplace")):
        module = RLELoss(q=q, form=form, reduction="sum")
        expected = rle_loss(pred, sigma, target, flow, weight, q=q, form=form, reduction="sum")
        torch.testing.assert_close(module(pred, sigma, target, flow, weight), expected)


def test_errors_name_the_argument() -> None:
    pred, sigma, target, weight = batch()
    flow = random_flow()
    with pytest.raises(ValueError, match="reduction must be one of"):
        rle_loss(pred, sigma, target, flow, reduction="avg")
    with pytest.raises(ValueError, match=r"form must be one of .*got 'mm'"):
        rle_loss(pred, sigma, target, flow, form="mm")
    with pytest.raises(ValueError, match=r"q must be one of .*got 'cauchy'"):
        RLELoss(q="cauchy")
    with pytest.raises(ValueError, match="form='official' has only its Laplace"):
        rle_loss(pred, sigma, target, flow, q="gaussian", form="official")
    with pytest.raises(ValueError, match=r"sigma must have the shape of pred \(4, 17, 2\), got \(4, 17, 1\)"):
        rle_loss(pred, sigma[..., :1], target, flow)
    with pytest.raises(ValueError, match=r"weight must have shape \[\.\.\., K\] = \(4, 17\).*got \(4, 17, 2\)"):
        rle_loss(pred, sigma, target, flow, weight[..., None].expand(-1, -1, 2))
    with pytest.raises(TypeError, match="target must be a floating-point tensor"):
        rle_loss(pred, sigma, target.long(), flow)
    with pytest.raises(ValueError, match="flow is 3-dimensional but the points are 2-dimensional"):
        rle_loss(pred, sigma, target, RealNVP(dim=3).double())
