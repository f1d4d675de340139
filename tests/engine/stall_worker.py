"""Run by ``test_distributed.py`` as one rank of a gloo group: train the toy model, with rank 1
stalling (``time.sleep``) in its third step for longer than ``ddp_timeout``, or dying there
(``STALL_SECONDS`` < 0: ``os._exit(1)``, as under ``kill -9``). Every surviving rank must end
with one ``error:`` line, as the command line prints a :class:`DistributedError`.

Usage: ``stall_worker.py OUT DDP_TIMEOUT STALL_SECONDS``
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_toys import Regression, collate, criterion, make_model

from sightkit.engine import DistributedError, TrainConfig, Trainer, get_rank


def main(out: str, timeout: float, stall: float) -> None:
    torch.set_num_threads(1)
    calls = 0

    def stalling(outputs, targets):
        nonlocal calls
        calls += 1
        if calls == 3 and get_rank() == 1:
            if stall < 0:
                os._exit(1)
            time.sleep(stall)
        return criterion(outputs, targets)

    config = TrainConfig(out=out, steps=6, batch=8, lr=1e-2, ddp_timeout=timeout, progress=False, plot=False)
    try:
        Trainer(make_model(dropout=0), stalling, Regression(), config, collate_fn=collate).fit()
    except DistributedError as error:
        print(f"error: {error}", flush=True)
        os._exit(2)  # as the command line does: a broken gloo group aborts the normal shutdown


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
