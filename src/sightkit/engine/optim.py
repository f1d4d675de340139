"""Optimisers with parameter groups, and learning-rate schedules by optimiser step.

Parameter groups follow the usual recipe (DETR, timm, ultralytics): no weight decay on
biases, normalisation layers, embeddings and any other 1-D parameter, because decaying
them towards zero only constrains scale and offset, not capacity; and a learning-rate
multiplier for the backbone (DETR trains its pretrained ResNet at 0.1 of the base rate).

Schedules are ``torch.optim.lr_scheduler.LambdaLR`` with a plain factor object (not a lambda),
stepped once per optimiser step (not per epoch), so they resume exactly from a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from sightkit._api import export

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "poly", "constant")

_NO_DECAY_MODULES = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
    nn.Embedding,
    nn.EmbeddingBag,
)


def _no_decay_names(model: nn.Module, no_decay: Sequence[str]) -> set[str]:
    names: set[str] = set()
    declared = model.no_weight_decay() if callable(getattr(model, "no_weight_decay", None)) else ()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if (
                param.ndim <= 1
                or isinstance(module, _NO_DECAY_MODULES)
                or full in declared
                or any(pattern in full for pattern in no_decay)
            ):
                names.add(full)
    return names


@export("engine.param_groups")
def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_prefix: str = "backbone.",
    backbone_lr_mult: float = 1.0,
    no_decay: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into groups for an optimiser.

    A parameter gets ``weight_decay=0`` when it is 1-D (biases, norm scales), belongs to a
    normalisation layer or an embedding, is named by ``model.no_weight_decay()`` (timm's
    convention) or contains one of the ``no_decay`` substrings (e.g. ``"pos_embed"``).
    Parameters whose name starts with ``backbone_prefix`` get ``lr * backbone_lr_mult``.

    Returns:
        Up to four non-empty groups, each ``{"name", "params", "lr", "weight_decay"}``.
        Frozen parameters (``requires_grad=False``) are left out.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not backbone_lr_mult >= 0:
        raise ValueError(f"backbone_lr_mult must be >= 0, got {backbone_lr_mult!r}")
    skip_decay = _no_decay_names(model, no_decay)
    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        backbone = bool(backbone_prefix) and name.startswith(backbone_prefix)
        decay = name not in skip_decay
        key = (backbone, decay)
        if key not in groups:
            groups[key] = {
                "name": f"{'backbone' if backbone else 'main'}_{'decay' if decay else 'no_decay'}",
                "params": [],
                "lr": lr * (backbone_lr_mult if backbone else 1.0),
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all have requires_grad=False)")
    return [groups[key] for key in sorted(groups)]


@export("engine.build_optimizer")
def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
    nesterov: bool = False,
    backbone_prefix: str = "backbone.",
    backbone_lr_mult: float = 1.0,
    no_decay: Sequence[str] = (),
) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay, Loshchilov & Hutter, ICLR 2019) or SGD with momentum
    (optionally Nesterov) over :func:`param_groups` of ``model``.

    ``betas`` is used by AdamW, ``momentum`` and ``nesterov`` by SGD. SGD's weight decay is
    the classic L2 term added to the gradient, as in face-recognition recipes.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer name must be one of {OPTIMIZERS}, got {name!r}")
    groups = param_groups(model, lr, weight_decay, backbone_prefix, backbone_lr_mult, no_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if not momentum >= 0:
        raise ValueError(f"momentum must be >= 0, got {momentum!r}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=true needs momentum > 0, got momentum=0")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@dataclass
class LRFactor:
    """The factor that multiplies each group's base learning rate at optimiser step ``k``
    (0-based): a linear warm-up from ``warmup_factor`` to 1 over ``warmup_steps``, then
    ``name``'s decay over the remaining ``total_steps - warmup_steps`` steps.

    A plain object, not a lambda, so that ``LambdaLR.state_dict()`` stores its settings.
    """

    name: str
    total_steps: int
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    min_lr_ratio: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    power: float = 1.0

    def __call__(self, k: int) -> float:
        if k < self.warmup_steps:
            return self.warmup_factor + (1.0 - self.warmup_factor) * k / self.warmup_steps
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            return self.gamma ** sum(k >= m for m in self.milestones)
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min((k - self.warmup_steps) / span, 1.0)
        decay = 0.5 * (1.0 + math.cos(math.pi * t)) if self.name == "cosine" else (1.0 - t) ** self.power
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay


@export("engine.build_scheduler")
def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str = "cosine",
    total_steps: int = 1,
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
    min_lr_ratio: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    power: float = 1.0,
) -> LambdaLR:
    """A learning-rate schedule by optimiser step: linear warm-up, then ``name``:

    - ``"cosine"``: half a cosine from 1 down to ``min_lr_ratio`` at ``total_steps``
      (Loshchilov & Hutter, SGDR, ICLR 2017, without restarts);
    - ``"poly"``: ``(1 - t)^power`` from 1 down to ``min_lr_ratio``;
    - ``"step"``: multiply by ``gamma`` at each step in ``milestones``;
    - ``"constant"``: 1.

    Call ``scheduler.step()`` once after every optimiser step. The factor at step ``k`` is
    ``LRFactor(...)(k)``; each group keeps its own base rate (e.g. the backbone's 0.1x).
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule name must be one of {SCHEDULES}, got {name!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0 <= warmup_factor <= 1:
        raise ValueError(f"warmup_factor must be in [0, 1], got {warmup_factor!r}")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    if name == "step" and list(milestones) != sorted(milestones):
        raise ValueError(f"milestones must be increasing step numbers, got {list(milestones)}")
    factor = LRFactor(
        name=name,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        warmup_factor=warmup_factor,
        min_lr_ratio=min_lr_ratio,
        milestones=tuple(int(m) for m in milestones),
        gamma=gamma,
        power=power,
    )
    return LambdaLR(optimizer, factor)
