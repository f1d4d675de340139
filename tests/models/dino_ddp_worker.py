"""Run by ``test_dino.py`` as two gloo processes: train a small DINO under DDP where rank 1's
batch has no targets (the case that makes RT-DETR's denoising hang or fail), and let rank 0
save every rank's parameters after the steps.

Usage (with torchrun's environment variables set): ``dino_ddp_worker.py OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from sightkit.models import create_model


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = create_model("dino_r18_tiny", num_classes=3, d_model=32, nhead=2, dim_feedforward=64, num_queries=8)
    criterion = model.build_criterion()
    # find_unused_parameters=False (the default): every parameter must take part in every step.
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(rank)
    for step in range(3):
        images = torch.randn(2, 3, 64, 64, generator=generator)
        count = 0 if rank == 1 else step + 1
        targets = [
            {"labels": torch.zeros(count, dtype=torch.int64), "boxes": torch.full((count, 4), 0.3)},
            {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
        ]
        losses = criterion(ddp(images, targets=targets), targets)
        total = sum(weight * losses[name] for name, weight in criterion.weight_dict.items())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    views = [None, None]
    dist.all_gather_object(views, {name: p.detach().clone() for name, p in model.named_parameters()})
    if rank == 0:
        torch.save(views, Path(out) / "params.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
