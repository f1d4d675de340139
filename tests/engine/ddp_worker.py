"""Run by ``test_distributed.py`` under ``torchrun``: train the toy model with the Trainer on
every rank (gloo, CPU) and let rank 0 save what the test compares.

Usage: ``torchrun --standalone --nproc_per_node=N ddp_worker.py OUT ACCUMULATE...``; one
run per ACCUMULATE value, in OUT/acc{ACCUMULATE}/ (result.pt holds the final weights and
evaluation metrics, ranks.pt every rank's view of the collective helpers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_toys import Regression, collate, criterion, make_model

from sightkit.engine import (
    TrainConfig,
    Trainer,
    all_gather_object,
    all_reduce_mean,
    cleanup_distributed,
    get_rank,
    reduce_sum,
)


def main(out: str, accumulations: list[int]) -> None:
    torch.set_num_threads(1)
    for accumulate in accumulations:
        config = TrainConfig(
            out=f"{out}/acc{accumulate}", steps=4, batch=8, accumulate=accumulate, lr=1e-2, eval_every=2,
            progress=False, plot=False,
        )  # fmt: skip
        trainer = Trainer(
            make_model(dropout=0), criterion, Regression(), config, collate_fn=collate, val_data=Regression(10, seed=1)
        )
        metrics = trainer.fit()
        rank = torch.tensor([float(get_rank())])
        views = all_gather_object(
            {
                "metrics": metrics,
                "params": trainer.unwrapped.state_dict(),
                "sum": reduce_sum(rank + 1).item(),
                "mean": all_reduce_mean(rank).item(),
            }
        )
        if get_rank() == 0:
            torch.save(views, Path(config.out) / "ranks.pt")
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1], [int(a) for a in sys.argv[2:]])
