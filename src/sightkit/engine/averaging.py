"""Robbins-Monro averaging: loss meters, model EMA and SWA from one update rule.

Every average here is the stochastic-approximation update (Robbins & Monro, 1951)

    w_k = w_{k-1} + a_k (x_k - w_{k-1})        (``torch.lerp(w, x, a_k)``)

with a different step size ``a_k`` for the k-th value (k = 1, 2, ...):

- ``a_k = 1/k``: the exact running mean of x_1..x_k (:class:`RunningMean`, :class:`SWA`);
- ``a_1 = 1``, then a constant ``a``: the exponential moving average (``RunningMean(alpha=a)``);
- ``a_k = 1 - decay (1 - exp(-k / tau))``: an EMA whose decay warms up from 0 to ``decay``
  so that early, poor weights are forgotten quickly (:class:`ModelEMA`, as in timm's
  ``ModelEmaV3`` and ultralytics' ``ModelEMA``).

Model averages cover parameters and buffers (BatchNorm statistics); integer buffers such
as ``num_batches_tracked`` are copied, not averaged. They read the unwrapped module, so a
DDP- or ``torch.compile``-wrapped model gives the same average, and they are written
by hand rather than with ``torch.optim.swa_utils.AveragedModel`` because that class keeps
one fixed rule per instance and averages integer buffers as floats.

SWA: Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from sightkit._api import export
from sightkit.engine.checkpoint import load_model_state
from sightkit.engine.data import call_model, to_device
from sightkit.engine.distributed import unwrap_model


def _check_fraction(name: str, value: float, *, closed: bool) -> None:
    ok = 0.0 <= value <= 1.0 if closed else 0.0 < value <= 1.0
    if not isinstance(value, int | float) or isinstance(value, bool) or not ok:
        interval = "[0, 1]" if closed else "(0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


@export("engine.RunningMean")
class RunningMean:
    """A running average of scalars (floats or 0-d tensors).

    ``RunningMean()`` is the exact, optionally weighted, mean: after ``update(x_i, n_i)``
    for i = 1..k its ``value`` is ``sum(n_i x_i) / sum(n_i)`` (step size ``n_k / sum n``).
    ``RunningMean(alpha=a)`` is a smoothed meter: the first value is taken as is, then
    ``value += a (x - value)`` (weights are ignored).

    Tensor values stay on their device (in float64), so that a loss meter does not force
    a GPU sync on every step; ``float(meter.value)`` syncs when it is read.
    """

    def __init__(self, alpha: float | None = None) -> None:
        if alpha is not None:
            _check_fraction("alpha", alpha, closed=False)
        self.alpha = alpha
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.weight = 0.0
        self._value: float | Tensor = 0.0

    def update(self, value: float | Tensor, weight: float = 1.0) -> None:
        """Fold in ``value`` (with ``weight`` for the exact mean, e.g. the batch size)."""
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"value must be a scalar, got a tensor of shape {tuple(value.shape)}")
            value = value.detach().to(torch.float64).reshape(())
        if not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight!r}")
        self.count += 1
        self.weight += weight
        # Exact mean: a_k = n_k / sum(n). Smoothed: the first value as is, then a constant a.
        step = weight / self.weight if self.alpha is None else (1.0 if self.count == 1 else self.alpha)
        self._value = self._value + step * (value - self._value)

    @property
    def value(self) -> float | Tensor:
        """The current average (0.0 before any update)."""
        return self._value

    def state_dict(self) -> dict[str, Any]:
        value = self._value.item() if isinstance(self._value, Tensor) else self._value
        return {"count": self.count, "weight": self.weight, "value": value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.weight, self._value = int(state["count"]), float(state["weight"]), float(state["value"])


class _AveragedModel:
    """A frozen copy of a model whose parameters and buffers follow ``w += a_k (x - w)``."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self.updates = 0

    def step_size(self, k: int) -> float:
        """The step size ``a_k`` of the k-th update (k >= 1)."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (wrapped or not) into the average."""
        source = unwrap_model(model)
        self.updates += 1
        step = self.step_size(self.updates)
        averages, values = [], []
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*source.parameters(), *source.buffers()]
        if len(mine) != len(theirs):
            raise ValueError(
                f"model has {len(theirs)} parameters and buffers but the average holds {len(mine)}; "
                "update the average with the model it was created from"
            )
        for average, value in zip(mine, theirs, strict=True):
            if average.is_floating_point():
                averages.append(average)
                values.append(value.detach())
            else:
                average.copy_(value)
        if averages:
            # One fused kernel per device and dtype; lerp is exactly the Robbins-Monro step.
            torch._foreach_lerp_(averages, values, step)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_model_state(self.module, state["module"], what=f"the {type(self).__name__} weights")
        self.updates = int(state["updates"])


@export("engine.ModelEMA")
class ModelEMA(_AveragedModel):
    """Exponential moving average of a model's parameters and buffers, with a warm-up of the decay.

    The k-th :meth:`update` uses the decay ``decay * (1 - exp(-k / tau))`` (``tau=0``: a
    constant ``decay`` from the start), i.e. step size ``a_k = 1 - that``. ``module`` is the
    averaged model (eval mode, no gradients) for evaluation and export.

    Args:
        model: the model being trained (DDP- or compile-wrapped is fine).
        decay: the decay reached after warm-up, in [0, 1].
        tau: warm-up length in updates; the decay reaches ``1 - 1/e`` of ``decay`` after ``tau``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0) -> None:
        _check_fraction("decay", decay, closed=True)
        if not tau >= 0:
            raise ValueError(f"tau must be >= 0 (0 turns the warm-up off), got {tau!r}")
        super().__init__(model)
        self.decay = float(decay)
        self.tau = float(tau)

    def current_decay(self, k: int) -> float:
        """The decay of the k-th update."""
        return self.decay if self.tau == 0 else self.decay * (1.0 - math.exp(-k / self.tau))

    def step_size(self, k: int) -> float:
        return 1.0 - self.current_decay(k)


@export("engine.SWA")
class SWA(_AveragedModel):
    """Stochastic weight averaging: the exact mean of the model snapshots passed to :meth:`update`.

    After K updates ``module`` holds the arithmetic mean of the K snapshots (parameters and
    floating buffers). BatchNorm statistics of averaged weights are not the average of
    the statistics; call :meth:`update_bn` with training data before using the result.
    """

    def step_size(self, k: int) -> float:
        return 1.0 / k

    @torch.no_grad()
    def update_bn(self, loader: Iterable[Any], device: torch.device | str | None = None) -> None:
        """Recompute the BatchNorm running statistics of ``module`` as plain averages over
        ``loader`` (batches of ``(inputs, targets)`` or inputs alone; dict inputs are passed
        as keyword arguments). Does nothing for a model without BatchNorm.

        The rule of ``torch.optim.swa_utils.update_bn`` (momentum ``None`` makes BatchNorm
        keep a cumulative average), written here so that inputs can be dicts.
        """
        momenta = {}
        for module in self.module.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                momenta[module] = module.momentum
                module.momentum = None
        if not momenta:
            return
        self.module.train()
        for batch in loader:
            inputs = batch[0] if isinstance(batch, list | tuple) else batch
            call_model(self.module, inputs if device is None else to_device(inputs, device))
        for module, momentum in momenta.items():
            module.momentum = momentum
        self.module.eval()
