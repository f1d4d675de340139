"""Samplers and device transfer for the training loop.

Training data is read through :class:`ResumableSampler`: ``DistributedSampler``'s order (a
permutation seeded by ``seed + epoch``, dealt round-robin to the ranks) that can also
start part-way through an epoch, which is how a resumed run skips the batches it has
already trained on. The order depends only on the seed, the epoch and the number of ranks,
never on the global RNG, so it is the same after a resume.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Sampler

from sightkit._api import export


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (always shuffled, tail dropped so every rank gets as many
    samples) that yields its epoch from position ``start`` on (:meth:`set_start`)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the current epoch."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start must be in [0, {self.num_samples}], got {start}")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``n`` reads samples ``r, r + n, r + 2n, ...`` in order, with no padding,
    so that gathering every rank's results gives each validation sample exactly once."""

    def __init__(self, size: int, num_replicas: int, rank: int) -> None:
        self.indices = range(rank, size, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@export("engine.to_device")
def to_device(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move every tensor in ``batch`` (nested lists, tuples and dicts, e.g. a list of target
    dicts) to ``device``; other values are returned as they are. Tensor subclasses such
    as torchvision's ``tv_tensors.BoundingBoxes`` keep their type."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device, non_blocking) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple keeps its type
        return type(batch)(*(to_device(value, device, non_blocking) for value in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(value, device, non_blocking) for value in batch)
    return batch


def call_model(model: Callable[..., Any], inputs: Any) -> Any:
    """``model(**inputs)`` for a dict of keyword arguments, else ``model(inputs)``."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
