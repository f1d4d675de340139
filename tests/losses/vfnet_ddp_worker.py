"""Run by ``test_vfnet_criterion.py`` as one of two gloo processes (with the environment
``torchrun`` would give): rank r computes :class:`VFNetCriterion` on image r of the test's
two-image batch; rank 0 saves every rank's losses to OUT/ranks.pt.

Usage: ``vfnet_ddp_worker.py OUT`` with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from test_vfnet_criterion import NUM_CLASSES, TARGETS, outputs_for

from sightkit.losses import VFNetCriterion


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    outputs = outputs_for(2)
    mine = {k: v[rank : rank + 1] if k.startswith("pred_") else v for k, v in outputs.items()}
    losses = {k: v.detach() for k, v in VFNetCriterion(NUM_CLASSES)(mine, [TARGETS[rank]]).items()}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, losses)
    if rank == 0:
        torch.save(gathered, Path(out) / "ranks.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
