"""Run by ``test_partial_fc.py`` as one of two gloo processes (with the environment ``torchrun``
would give): a DDP-wrapped linear backbone and :class:`PartialFC` head on this rank's half of
the batch; rank 0 saves every rank's loss and gradients to OUT/ranks.pt.

Usage: ``partial_fc_worker.py OUT`` with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from partial_fc_data import MARGINS, NUM_CLASSES, Recognizer, make_problem

from sightkit.losses import PartialFC, exclude_from_ddp


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    inputs, labels, backbone, centres = make_problem()
    head = PartialFC(centres.shape[1], NUM_CLASSES, sample_rate=1.0, **MARGINS)
    with torch.no_grad():
        head.weight.copy_(centres[head.class_start : head.class_start + head.num_local])
    # Through DDP's forward and gradient hooks, as in training: the backbone's gradients are
    # averaged over the ranks, the head's centres are left alone.
    model = nn.parallel.DistributedDataParallel(exclude_from_ddp(Recognizer(backbone, head)))
    rows = inputs.shape[0] // world
    part = slice(rank * rows, (rank + 1) * rows)
    loss = model(inputs[part], labels[part])
    loss.backward()
    view = {
        "loss": loss.detach(),
        "class_start": head.class_start,
        "head_grad": head.weight.grad.clone(),
        "backbone_grads": {n: p.grad.clone() for n, p in backbone.named_parameters()},
    }
    views = [None] * world
    dist.all_gather_object(views, view)
    if rank == 0:
        torch.save(views, Path(out) / "ranks.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
