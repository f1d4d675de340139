"""A tiny regression problem for the engine tests (shared with the torchrun worker script).

Samples are ``(x [8], {"y": [1]})``; batches are ``(images [B, 8], targets: list of dicts)``,
the same structure as the detection tasks, so the trainer's generic device transfer and
per-image counting are exercised.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset


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
