"""The problem shared by the two-process Partial FC test and its one-process reference."""

from __future__ import annotations

import torch
from torch import Tensor, nn

NUM_CLASSES = 11  # odd: the two ranks hold 6 and 5 classes
MARGINS = {"scale": 8.0, "m1": 1.0, "m2": 0.3, "m3": 0.1}


class Recognizer(nn.Module):
    """A linear backbone and a classifier head: ``forward(inputs, labels) -> loss``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, inputs: Tensor, labels: Tensor) -> Tensor:
        return self.head(self.backbone(inputs), labels)


def make_problem() -> tuple[Tensor, Tensor, nn.Linear, Tensor]:
    """Inputs ``[8, 6]``, labels ``[8]`` (every class of one rank's shard and of the other's),
    a linear backbone ``6 -> 4`` and class centres ``[11, 4]``, the same on every process."""
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, 6, generator=g)
    labels = torch.tensor([0, 7, 3, 10, 5, 6, 3, 1])
    backbone = nn.Linear(6, 4)
    with torch.no_grad():
        backbone.weight.copy_(torch.randn(4, 6, generator=g))
        backbone.bias.copy_(torch.randn(4, generator=g))
    return inputs, labels, backbone, torch.randn(NUM_CLASSES, 4, generator=g)
