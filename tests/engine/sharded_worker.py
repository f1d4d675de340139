"""Run by ``test_rank_local.py`` under a torchrun-like environment (2 gloo processes): train
the Partial FC toy straight through, and again with a crash and a resume, for each sample
rate; rank 0 saves the whole head (every rank's shard) of each run.

Usage: ``sharded_worker.py OUT``; writes OUT/rate{R}/{straight,resumed}.pt and leaves the
crashed run's step-3 checkpoint as OUT/rate{R}/step3.pt.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_toys import Identities, Recognizer, collate_identities, margin_criterion, sharded_config, whole_head

from sightkit.engine import Trainer, barrier, cleanup_distributed, get_rank, init_distributed

RATES = (0.5, 1.0)


class Crash:
    """The toy criterion, raising on its 5th training call (inside step 5, after the step-3 save)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, loss, labels):
        self.calls += 1
        if self.calls == 5:
            raise RuntimeError("simulated crash")
        return margin_criterion(loss, labels)


def main(out: str) -> None:
    torch.set_num_threads(1)
    init_distributed("cpu")  # before the first PartialFC, which reads its shard from the group
    for rate in RATES:
        folder = Path(out) / f"rate{rate}"
        runs = {}
        straight = Trainer(Recognizer(rate), margin_criterion, Identities(), sharded_config(folder / "straight"),
                           collate_fn=collate_identities)  # fmt: skip
        straight.fit()
        runs["straight"] = whole_head(straight)
        crashing = Trainer(Recognizer(rate), Crash(), Identities(), sharded_config(folder / "stopped"),
                           collate_fn=collate_identities)  # fmt: skip
        try:
            crashing.fit()
        except RuntimeError as error:
            assert "simulated crash" in str(error)
        if get_rank() == 0:  # kept for the test, which resumes it on one process
            shutil.copy(folder / "stopped" / "last.pt", folder / "step3.pt")
        barrier()
        resumed = Trainer(Recognizer(rate, seed=1), margin_criterion, Identities(),
                          sharded_config(folder / "stopped", resume=True), collate_fn=collate_identities)  # fmt: skip
        assert resumed.step == 3
        resumed.fit()
        runs["resumed"] = whole_head(resumed)
        if get_rank() == 0:
            for name, value in runs.items():
                torch.save(value, folder / f"{name}.pt")
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
