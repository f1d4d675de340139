"""Shared test set-up: one intra-op thread per test worker (the suite runs under xdist on
2 cores) and deterministic seeds."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
