"""Multi-process training with ``torchrun`` and PyTorch DDP, and helpers that are no-ops on one process.

``torchrun --nproc_per_node=N -m sightkit train ...`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` in each process's environment; :func:`init_distributed` reads them and joins
the process group (NCCL on GPUs, gloo on CPUs). Everything else here asks the process
group when there is one and does the single-process thing when there is not, so that
task code (a criterion that all-reduces its number of boxes, an evaluator that gathers
predictions) is written once for both cases.

A rank that stalls or dies would otherwise hold the others in their next collective for
the backend's default (30 minutes for gloo); :func:`init_distributed` passes a ``timeout``
(the trainer's ``ddp_timeout``, 10 minutes by default) to ``init_process_group``, and
:func:`collective_errors` turns the backend's timeout or lost-peer error into one
:class:`DistributedError` line on every surviving rank.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sightkit._api import export


@export("engine.DistributedContext")
@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its global ``rank``, ``local_rank`` on its node, the
    ``world_size`` and the ``device`` it computes on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


@export("engine.DistributedError")
class DistributedError(RuntimeError):
    """A collective operation failed because another rank stalled past the timeout or died."""


#: Fragments of the backends' messages for a timed-out or broken collective (gloo, NCCL).
_COLLECTIVE_FAILURES = ("Timed out", "timed out", "Connection closed by peer", "Connection reset", "NCCL", "gloo")


@export("engine.collective_errors")
@contextlib.contextmanager
def collective_errors(timeout: float) -> Iterator[None]:
    """Re-raise a collective's timeout or lost-peer error inside the block as a one-line
    :class:`DistributedError` naming this rank and the ``timeout`` (seconds) it waited.

    Nothing changes on one process, or for errors of other kinds.
    """
    try:
        yield
    except RuntimeError as error:
        text = str(error)
        broken = isinstance(error, dist.DistError) or any(part in text for part in _COLLECTIVE_FAILURES)
        if not _active() or isinstance(error, DistributedError) or not broken:
            raise
        reason = " ".join(text.split()).split("] ", 1)[-1][:200]  # drop gloo's source-file prefix
        raise DistributedError(
            f"rank {dist.get_rank()} of {dist.get_world_size()}: a collective operation failed ({reason}) after "
            f"waiting up to ddp_timeout={timeout:g} s: another rank stalled or died; its own output says why "
            "(raise ddp_timeout= if a rank legitimately needs longer, e.g. for a slow evaluation)"
        ) from None


@export("engine.init_distributed")
def init_distributed(device: str = "", timeout: float = 600.0) -> DistributedContext:
    """Join the process group described by ``torchrun``'s environment, if any.

    Args:
        device: ``""`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``;
            ``"cpu"`` or ``"cuda"``/``"cuda:K"`` force one (under torchrun ``"cuda"``
            becomes ``cuda:LOCAL_RANK``).
        timeout: seconds a collective operation waits for the other ranks before failing
            (``init_process_group``'s ``timeout``).

    With ``WORLD_SIZE`` unset or 1 this starts no process group and returns rank 0 of 1.
    Calling it again after the group exists returns the same context (and keeps its timeout).
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device == "":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} asks for CUDA, but torch sees no GPU; use device=cpu")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        # device_id binds the NCCL communicator to this GPU up front (no lazy guessing).
        dist.init_process_group(
            backend=backend,
            device_id=resolved if resolved.type == "cuda" else None,
            timeout=datetime.timedelta(seconds=timeout),
        )
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=resolved)


@export("engine.cleanup_distributed")
def cleanup_distributed() -> None:
    """Leave the process group if this process is in one, after every rank got here (a rank
    that left early would take the rendezvous store down under the others)."""
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@export("engine.get_rank")
def get_rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if _active() else 0


@export("engine.get_world_size")
def get_world_size() -> int:
    """The number of processes; 1 without a process group."""
    return dist.get_world_size() if _active() else 1


@export("engine.is_main_process")
def is_main_process() -> bool:
    """True on rank 0 (and on a single process)."""
    return get_rank() == 0


@export("engine.reduce_sum")
def reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all processes (a new tensor; ``tensor`` is untouched).

    A no-op copy on one process. Use it for normalisers such as the number of target
    boxes in a batch, so that every rank divides its loss by the same global count.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    out = tensor.detach().clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@export("engine.all_reduce_mean")
def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over all processes (a new floating tensor); a copy on one process."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    out = reduce_sum(tensor if tensor.is_floating_point() else tensor.double())
    return out / get_world_size()


@export("engine.all_gather_object")
def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` on one process.

    For evaluation: each rank predicts on its shard of the validation set, gathers the
    predictions with this, and computes the metrics on the whole set.
    """
    if not _active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


@export("engine.barrier")
def barrier() -> None:
    """Wait until every process gets here; nothing on one process."""
    if _active():
        dist.barrier()


@export("engine.unwrap_model")
def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or ``torch.compile`` wrappers.

    Checkpoints, averaged weights and exports use the unwrapped module, so that their keys
    carry no ``module.`` or ``_orig_mod.`` prefix and load on any number of processes.
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@export("engine.per_rank_batch")
def per_rank_batch(batch: int, world_size: int, accumulate: int = 1) -> int:
    """The micro-batch each process loads so that ``world_size * accumulate`` of them make
    one optimiser step over the global ``batch``.

    Raises:
        ValueError: ``batch`` is not a positive multiple of ``world_size * accumulate``.
    """
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    parts = world_size * accumulate
    if batch < 1 or batch % parts != 0:
        raise ValueError(
            f"batch={batch} (the global batch of one optimiser step) must be a positive multiple of "
            f"world size {world_size} x accumulate {accumulate} = {parts}; change batch= to a multiple of "
            f"{parts}, or change accumulate= or the number of processes (torchrun --nproc_per_node)"
        )
    return batch // parts
