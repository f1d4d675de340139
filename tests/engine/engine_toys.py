"""Tiny problems for the engine tests (shared with the torchrun worker scripts): a regression,
and 6 identities for a model with a sharded Partial FC head.

Samples are ``(x [8], {"y": [1]})``; batches are ``(images [B, 8], targets: list of dicts)``,
the same structure as the detection tasks, so the trainer's generic device transfer and
per-image counting are exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sightkit.engine import TrainConfig, Trainer, all_gather_object
from sightkit.losses import PartialFC, exclude_from_ddp


class Regression(Dataset):
    def __init__(self, size: int = 48, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, 8, generator=generator)
        self.y = self.x @ torch.randn(8, 1, generator=generator) + 0.1 * torch.randn(size, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.x[index], {"y": self.y[index]}


def collate(samples: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[dict[str, Tensor]]]:
    return torch.stack([x for x, _ in samples]), [t for _, t in samples]


def make_model(seed: int = 0, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))


def criterion(outputs: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    y = torch.stack([t["y"] for t in targets])
    return {"mse": nn.functional.mse_loss(outputs.float(), y), "l1": nn.functional.l1_loss(outputs.float(), y)}


class Identities(Dataset):
    """Samples ``(x [8], label)`` of 6 classes, for a model with a sharded Partial FC head."""

    def __init__(self, size: int = 48, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(size) % 6
        self.x = torch.randn(6, 8, generator=generator)[self.labels] + 0.5 * torch.randn(size, 8, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.x[index], int(self.labels[index])


def collate_identities(samples: list[tuple[Tensor, int]]) -> tuple[dict[str, Tensor], Tensor]:
    labels = torch.tensor([label for _, label in samples])
    return {"x": torch.stack([x for x, _ in samples]), "labels": labels}, labels


class Recognizer(nn.Module):
    """A linear embedder and a Partial FC head whose centres are sharded over the ranks;
    ``forward(x, labels)`` returns the margin-softmax loss."""

    def __init__(self, sample_rate: float, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embedder = nn.Linear(8, 4)
        self.head = PartialFC(4, 6, sample_rate=sample_rate, scale=4.0, m2=0.2)
        exclude_from_ddp(self)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        return self.head(self.embedder(x), labels)


def margin_criterion(loss: Tensor, labels: Tensor) -> dict[str, Tensor]:
    return {"margin": loss}


def sharded_config(out: Path, **overrides) -> TrainConfig:
    """The Partial FC toy's run: 48 samples, batch 8 (6 steps an epoch), AdamW, EMA, a checkpoint every 3 steps."""
    settings = dict(out=str(out), steps=6, batch=8, lr=5e-2, save_every=3, ema=True, ema_decay=0.5, ema_tau=0.0)
    settings.update(progress=False, plot=False, eval_every=0)
    return TrainConfig(**{**settings, **overrides})


def whole_head(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The head's centres, their AdamW moments and their EMA, concatenated over the ranks."""
    head = trainer.unwrapped.head
    state = trainer.optimizer.state[head.weight]
    mine = {
        "weight": head.weight.detach(),
        "exp_avg": state["exp_avg"],
        "exp_avg_sq": state["exp_avg_sq"],
        "ema": trainer.ema.module.head.weight,
        "embedder": trainer.unwrapped.embedder.weight.detach(),
    }
    parts = all_gather_object(mine)
    whole = {key: torch.cat([part[key] for part in parts]) for key in mine if key != "embedder"}
    return {**whole, "embedder": parts[0]["embedder"]}
