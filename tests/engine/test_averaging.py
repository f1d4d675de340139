"""Robbins-Monro averages: running mean, smoothed meter, model EMA and SWA against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from sightkit.engine import SWA, ModelEMA, RunningMean

VALUES = [3.0, -1.0, 4.0, 1.5, 9.0, 2.0, -6.0]


def test_running_mean_is_the_arithmetic_mean() -> None:
    meter = RunningMean()
    for k, x in enumerate(VALUES, start=1):
        meter.update(x)
        assert meter.value == pytest.approx(sum(VALUES[:k]) / k, rel=1e-12)
    assert meter.count == len(VALUES)


def test_weighted_running_mean_is_the_weighted_mean() -> None:
    # Per-batch mean losses weighted by batch size give the mean over all samples.
    weights = [4, 4, 4, 1, 2, 8, 3]
    meter = RunningMean()
    for x, n in zip(VALUES, weights, strict=True):
        meter.update(torch.tensor(x), weight=n)
    expected = sum(x * n for x, n in zip(VALUES, weights, strict=True)) / sum(weights)
    assert isinstance(meter.value, torch.Tensor) and meter.value.dtype == torch.float64
    assert float(meter.value) == pytest.approx(expected, rel=1e-12)


def test_smoothed_meter_equals_the_closed_form() -> None:
    # w_1 = x_1, then w_k = (1 - a) w_{k-1} + a x_k, so w_n = (1-a)^(n-1) x_1 + sum_{k>=2} a (1-a)^(n-k) x_k.
    a = 0.3
    meter = RunningMean(alpha=a)
    for x in VALUES:
        meter.update(x)
    n = len(VALUES)
    expected = (1 - a) ** (n - 1) * VALUES[0] + sum(a * (1 - a) ** (n - k) * VALUES[k - 1] for k in range(2, n + 1))
    assert meter.value == pytest.approx(expected, rel=1e-12)


def test_meter_state_round_trips() -> None:
    meter = RunningMean()
    for x in VALUES[:3]:
        meter.update(x)
    restored = RunningMean()
    restored.load_state_dict(meter.state_dict())
    for x in VALUES[3:]:
        meter.update(x)
        restored.update(x)
    assert restored.value == meter.value and restored.count == meter.count


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _snapshots(model: nn.Module, count: int) -> list[dict[str, torch.Tensor]]:
    """Change every parameter and BatchNorm buffer ``count`` times; return each state."""
    states = []
    for k in range(count):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        model.train()
        model(torch.randn(8, 3) * (k + 1))  # moves running_mean / running_var, counts batches
        states.append({key: value.clone() for key, value in model.state_dict().items()})
    return states


def _load(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    model.load_state_dict(state)
    return model


def test_ema_with_constant_decay_equals_the_closed_form() -> None:
    # tau=0: a constant decay d from the start, w_K = d^K w_0 + sum_k (1 - d) d^(K-k) x_k.
    model = _net()
    w0 = {key: value.clone() for key, value in model.state_dict().items()}
    ema = ModelEMA(model, decay=0.8, tau=0.0)
    snapshots = _snapshots(model, 5)
    for state in snapshots:
        ema.update(_load(model, state))
    d, K = 0.8, len(snapshots)
    averaged = ema.module.state_dict()
    for key, value in w0.items():
        if not value.is_floating_point():
            assert torch.equal(averaged[key], snapshots[-1][key])  # num_batches_tracked is copied
            continue
        expected = d**K * value + sum((1 - d) * d ** (K - k) * snapshots[k - 1][key] for k in range(1, K + 1))
        torch.testing.assert_close(averaged[key], expected, rtol=1e-5, atol=1e-6)


def test_ema_decay_warms_up() -> None:
    ema = ModelEMA(nn.Linear(1, 1), decay=0.999, tau=10.0)
    assert ema.current_decay(1) == pytest.approx(0.999 * (1 - math.exp(-0.1)))
    assert ema.current_decay(10) == pytest.approx(0.999 * (1 - math.exp(-1)))
    assert ema.current_decay(10_000) == pytest.approx(0.999)
    # One update by hand: w_1 = w_0 + (1 - d_1)(x_1 - w_0).
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema = ModelEMA(model, decay=0.999, tau=10.0)
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.update(model)
    d1 = 0.999 * (1 - math.exp(-0.1))
    assert ema.module.weight.item() == pytest.approx(2.0 + (1 - d1) * 3.0, rel=1e-6)


def test_swa_of_k_snapshots_is_their_average() -> None:
    model = _net()
    swa = SWA(model)
    snapshots = _snapshots(model, 6)
    for state in snapshots:
        swa.update(_load(model, state))
    averaged = swa.module.state_dict()
    for key in averaged:
        stacked = torch.stack([s[key] for s in snapshots])
        if stacked.is_floating_point():
            torch.testing.assert_close(averaged[key], stacked.mean(0), rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(averaged[key], snapshots[-1][key])


def test_swa_matches_torch_averaged_model() -> None:
    model = _net()
    ours, reference = SWA(model), AveragedModel(model, use_buffers=False)
    for state in _snapshots(model, 4):
        _load(model, state)
        ours.update(model)
        reference.update_parameters(model)
    for (name, mine), theirs in zip(ours.module.named_parameters(), reference.module.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7, msg=name)


def test_averages_leave_the_model_alone_and_round_trip() -> None:
    model = _net()
    ema = ModelEMA(model, decay=0.5, tau=0.0)
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    assert all(p.requires_grad for p in model.parameters())
    for state in _snapshots(model, 2):
        ema.update(_load(model, state))
    restored = ModelEMA(_net(), decay=0.5, tau=0.0)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 2
    for key, value in ema.module.state_dict().items():
        assert torch.equal(restored.module.state_dict()[key], value)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 1\], got 0"):
        RunningMean(alpha=0)
    with pytest.raises(ValueError, match=r"decay must be a number in \[0, 1\], got 1.5"):
        ModelEMA(nn.Linear(1, 1), decay=1.5)
    with pytest.raises(ValueError, match=r"tau must be >= 0"):
        ModelEMA(nn.Linear(1, 1), tau=-1.0)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got dict"):
        SWA({})
    with pytest.raises(ValueError, match=r"value must be a scalar, got a tensor of shape \(2,\)"):
        RunningMean().update(torch.ones(2))
    with pytest.raises(ValueError, match="weight must be > 0, got 0"):
        RunningMean().update(1.0, weight=0)
    ema = ModelEMA(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="different model"):
        ema.load_state_dict({"module": nn.Linear(3, 2).state_dict(), "updates": 1})


def test_swa_update_bn_recomputes_statistics_on_the_averaged_weights() -> None:
    model = _net()
    swa = SWA(model)
    for state in _snapshots(model, 3):
        swa.update(_load(model, state))
    data = torch.randn(24, 3) * 2 + 1
    loader = [(data[i : i + 8], None) for i in range(0, 24, 8)]  # (inputs, targets), equal-size batches
    swa.update_bn(loader)
    features = swa.module[0](data)  # what BatchNorm sees: the averaged first layer's output
    # Equal batches: the average of batch means is the mean; of unbiased batch variances, their mean.
    torch.testing.assert_close(swa.module[1].running_mean, features.mean(0), rtol=1e-5, atol=1e-6)
    batch_vars = torch.stack([features[i : i + 8].var(0, unbiased=True) for i in range(0, 24, 8)])
    torch.testing.assert_close(swa.module[1].running_var, batch_vars.mean(0), rtol=1e-5, atol=1e-6)
    assert swa.module[1].momentum == 0.1 and not swa.module.training

    class Keywords(nn.Module):  # dict inputs are passed as keyword arguments
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x, scale):
            return self.net(x * scale)

    keyword_swa = SWA(Keywords())
    keyword_swa.update_bn([({"x": data, "scale": torch.tensor(1.0)}, None)])
    expected = keyword_swa.module.net[0](data).mean(0)
    torch.testing.assert_close(keyword_swa.module.net[1].running_mean, expected, rtol=1e-5, atol=1e-6)
