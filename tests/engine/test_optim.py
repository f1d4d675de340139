"""Optimiser groups (no decay on norms/biases/embeddings, backbone multiplier), AdamW vs
Adam + L2 by hand, and the step schedules against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sightkit.engine import build_optimizer, build_scheduler, param_groups


class Detector(nn.Module):
    """A backbone with a norm layer, an embedding, a 2-D position table and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.query_embed = nn.Embedding(5, 4)
        self.pos_table = nn.Parameter(torch.randn(6, 4))
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _group_of(groups: list[dict], name: str, model: nn.Module) -> dict:
    param = dict(model.named_parameters())[name]
    (group,) = [g for g in groups if any(p is param for p in g["params"])]
    return group


def test_groups_put_no_decay_on_norms_biases_embeddings_and_scale_the_backbone() -> None:
    model = Detector()
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1, no_decay=("pos_table",))
    expected = {  # name: (lr, weight_decay)
        "backbone.0.weight": (1e-4, 0.05),
        "backbone.0.bias": (1e-4, 0.0),
        "backbone.1.weight": (1e-4, 0.0),
        "backbone.1.bias": (1e-4, 0.0),
        "query_embed.weight": (1e-3, 0.0),
        "pos_table": (1e-3, 0.0),
        "norm.weight": (1e-3, 0.0),
        "norm.bias": (1e-3, 0.0),
        "head.weight": (1e-3, 0.05),
        "head.bias": (1e-3, 0.0),
    }
    for name, (lr, wd) in expected.items():
        group = _group_of(groups, name, model)
        assert (group["lr"], group["weight_decay"]) == (pytest.approx(lr), wd), name
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(expected)  # the frozen layer is left out, nothing twice
    assert sorted(g["name"] for g in groups) == ["backbone_decay", "backbone_no_decay", "main_decay", "main_no_decay"]


def test_model_declares_its_own_no_decay_names() -> None:
    model = Detector()
    model.no_weight_decay = lambda: {"head.weight"}
    assert _group_of(param_groups(model, 1e-3, 0.1), "head.weight", model)["weight_decay"] == 0.0


def test_no_decay_groups_really_skip_decay() -> None:
    # With zero gradients AdamW's update is pure decay: p <- p (1 - lr wd).
    model = Detector()
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()
    for name, p in model.named_parameters():
        if name in ("backbone.0.weight", "pos_table", "head.weight"):  # the 2-D weights decay
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5), rtol=0, atol=1e-7)
        else:
            assert torch.equal(p.detach(), before[name]), name


def test_adamw_first_step_is_decoupled_and_differs_from_adam_with_l2() -> None:
    lr, wd, eps = 0.1, 0.2, 1e-8
    p0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.3, 0.1, -0.4], dtype=torch.float64)
    # Bias-corrected first step: m_hat = g, v_hat = g^2, so the Adam direction is g / (|g| + eps).
    adamw_by_hand = p0 * (1 - lr * wd) - lr * g / (g.abs() + eps)
    g_l2 = g + wd * p0
    adam_l2_by_hand = p0 - lr * g_l2 / (g_l2.abs() + eps)

    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(p0)
    optimizer = build_optimizer(model, name="adamw", lr=lr, weight_decay=wd)
    model.weight.grad = g.clone().reshape(1, 3)
    optimizer.step()
    torch.testing.assert_close(model.weight.detach().flatten(), adamw_by_hand, rtol=0, atol=1e-12)

    adam = nn.Parameter(p0.clone())
    reference = torch.optim.Adam([adam], lr=lr, weight_decay=wd)  # L2: wd * p added to the gradient
    adam.grad = g.clone()
    reference.step()
    torch.testing.assert_close(adam.detach(), adam_l2_by_hand, rtol=0, atol=1e-12)
    assert not torch.allclose(adamw_by_hand, adam_l2_by_hand)


def test_sgd_nesterov_two_steps_by_hand() -> None:
    lr, mu, wd = 0.1, 0.9, 0.01
    model = nn.Linear(2, 1, bias=False).double()
    p = torch.tensor([1.0, -1.0], dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(p)
    optimizer = build_optimizer(model, name="sgd", lr=lr, weight_decay=wd, momentum=mu, nesterov=True)
    grads = [torch.tensor([0.5, 0.2], dtype=torch.float64), torch.tensor([-0.1, 0.3], dtype=torch.float64)]
    buffer = None
    for g in grads:
        model.weight.grad = g.clone().reshape(1, 2)
        optimizer.step()
        d = g + wd * p
        buffer = d if buffer is None else mu * buffer + d
        p = p - lr * (d + mu * buffer)
    torch.testing.assert_close(model.weight.detach().flatten(), p, rtol=0, atol=1e-12)


def _lrs(scheduler, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_then_cosine() -> None:
    lrs = _lrs(build_scheduler(_optimizer(2.0), "cosine", total_steps=12, warmup_steps=4, warmup_factor=0.0), 13)
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])  # linear from 0 to the base rate
    assert lrs[8] == pytest.approx(1.0)  # half-way through the 8 cosine steps: (1 + cos(pi/2)) / 2
    assert lrs[6] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lrs[12] == pytest.approx(0.0, abs=1e-12)


def test_cosine_floor_poly_step_and_constant() -> None:
    cosine = _lrs(build_scheduler(_optimizer(), "cosine", total_steps=10, min_lr_ratio=0.1), 11)
    assert cosine[10] == pytest.approx(0.1) and min(cosine) == pytest.approx(0.1)
    poly = _lrs(build_scheduler(_optimizer(), "poly", total_steps=10, power=2.0), 11)
    assert poly == pytest.approx([(1 - k / 10) ** 2 for k in range(11)])
    step = _lrs(build_scheduler(_optimizer(), "step", total_steps=10, milestones=(3, 7), gamma=0.5), 10)
    assert step == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25])
    assert _lrs(build_scheduler(_optimizer(), "constant", total_steps=5, warmup_steps=2), 4) == pytest.approx(
        [0.001, 0.5005, 1, 1]
    )


def test_backbone_keeps_its_multiplier_under_the_schedule() -> None:
    model = Detector()
    optimizer = build_optimizer(model, lr=1.0, backbone_lr_mult=0.1)
    scheduler = build_scheduler(optimizer, "poly", total_steps=4)
    _lrs(scheduler, 2)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["backbone_decay"] == pytest.approx(0.1 * lrs["main_decay"]) and lrs["main_decay"] == pytest.approx(0.5)


def test_scheduler_resumes_from_its_state() -> None:
    straight = build_scheduler(_optimizer(), "cosine", total_steps=10, warmup_steps=3)
    expected = _lrs(straight, 10)
    first = build_scheduler(_optimizer(), "cosine", total_steps=10, warmup_steps=3)
    head = _lrs(first, 4)
    second = build_scheduler(_optimizer(), "cosine", total_steps=10, warmup_steps=3)
    second.load_state_dict(first.state_dict())
    second.optimizer.param_groups[0]["lr"] = first.optimizer.param_groups[0]["lr"]  # the optimiser's own state
    assert head + _lrs(second, 6) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "adam"}, "optimizer name must be one of"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"name": "sgd", "momentum": 0.0, "nesterov": True}, "nesterov=true needs momentum > 0"),
    ],
)
def test_bad_optimizer_settings(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_optimizer(Detector(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "linear"}, "schedule name must be one of"),
        ({"total_steps": 0}, "total_steps must be >= 1, got 0"),
        ({"total_steps": 5, "warmup_steps": 6}, r"warmup_steps must be in \[0, total_steps=5\], got 6"),
        ({"name": "step", "milestones": (5, 2)}, r"milestones must be increasing step numbers, got \[5, 2\]"),
    ],
)
def test_bad_schedule_settings(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_scheduler(_optimizer(), **kwargs)


def test_model_without_trainable_parameters() -> None:
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="Linear has no trainable parameters"):
        param_groups(model, 1e-3, 0.0)
