"""Checkpoints of state that differs between DDP ranks, such as Partial FC's sharded class centres.

Most of a DDP model is the same on every rank, so rank 0's ``state_dict`` is the whole
model. Parameters kept out of DDP (:func:`~sightkit.losses.exclude_from_ddp`) are not:
each rank holds its own shard. The trainer gathers every rank's copy of those tensors —
the parameter, its optimiser state and its EMA/SWA averages — into the checkpoint, so
that the checkpoint holds the whole model. On resume each rank takes back its own; when
the number of processes changed, the module that owns a sharded tensor cuts this rank's
rows out of the concatenated shards with its ``reshard(parts) -> Tensor`` method
(:meth:`~sightkit.losses.PartialFC.reshard`).

A one-process checkpoint needs no gathering (its ``model`` entry already holds every
row), and resumes on any number of processes the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# The per-rank entries: the model's tensors, their optimiser state, their EMA/SWA averages.
HOLDERS = ("ema", "swa")


def rank_local_names(model: nn.Module) -> list[str]:
    """The ``state_dict`` names of ``model`` whose values differ between ranks: those kept out
    of DDP's broadcast and averaging."""
    state = model.state_dict(keep_vars=True)
    return [name for name in getattr(model, "_ddp_params_and_buffers_to_ignore", []) if name in state]


def _optimizer_indices(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """``{parameter name: its key in optimizer.state_dict()["state"]}`` (PyTorch numbers the
    parameters in the order of the parameter groups)."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    ordered = (parameter for group in optimizer.param_groups for parameter in group["params"])
    return {names[id(parameter)]: index for index, parameter in enumerate(ordered) if id(parameter) in names}


def rank_local_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, averaged: Mapping[str, nn.Module | None]
) -> dict[str, Any] | None:
    """This rank's rank-local tensors: ``{"model": {name: tensor}, "optimizer": {name: state},
    "ema"/"swa": {name: tensor}}``; None when ``model`` has none."""
    names = rank_local_names(model)
    if not names:
        return None
    model_state = model.state_dict()
    parameters = dict(model.named_parameters())
    part: dict[str, Any] = {
        "model": {name: model_state[name] for name in names},
        "optimizer": {
            name: optimizer.state[parameters[name]] for name in names if parameters.get(name) in optimizer.state
        },
    }
    for holder, module in averaged.items():
        if module is not None:
            averaged_state = module.state_dict()
            part[holder] = {name: averaged_state[name] for name in names}
    return part


def _parts_from_checkpoint(state: Mapping[str, Any], names: Sequence[str], indices: Mapping[str, int]) -> list[dict]:
    """The one part of a checkpoint written by one process, read from its ordinary entries."""
    saved = state["optimizer"]["state"]
    part: dict[str, Any] = {
        "model": {name: state["model"][name] for name in names},
        "optimizer": {name: saved[indices[name]] for name in names if indices.get(name) in saved},
    }
    for holder in HOLDERS:
        if state.get(holder) is not None:
            part[holder] = {name: state[holder]["module"][name] for name in names}
    return [part]


def _pick(model: nn.Module, name: str, values: Sequence[Any], rank: int, world_size: int, source: str) -> Any:
    """This rank's value of ``name`` among every saved rank's ``values``."""
    if len(values) == world_size:
        return values[rank]
    if not isinstance(values[0], Tensor) or values[0].dim() == 0:
        return values[0]  # a step count or another scalar: the same on every rank
    owner = model.get_submodule(name.rpartition(".")[0])
    if not callable(getattr(owner, "reshard", None)):
        raise ValueError(
            f"{source} was written by {len(values)} processes and {name} differs between them, but "
            f"{type(owner).__name__} cannot re-cut it for {world_size}; resume with {len(values)} processes"
        )
    return owner.reshard(values)


def restore_rank_local(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    world_size: int,
    source: str = "the checkpoint",
) -> None:
    """Put this rank's rank-local tensors into ``state`` (a trainer checkpoint, changed in
    place) before it is loaded: in its ``model``, ``optimizer`` and ``ema``/``swa`` entries.

    Raises:
        ValueError: the number of processes changed and a rank-local tensor's module has no
            ``reshard`` method.
    """
    names = rank_local_names(model)
    parts = state.get("rank_local")
    if not names or (parts is None and state.get("world_size", 1) != 1):
        return  # nothing rank-local, or a checkpoint written before rank-local state was saved
    indices = _optimizer_indices(model, optimizer)
    if parts is None:
        parts = _parts_from_checkpoint(state, names, indices)
    for name in names:
        state["model"][name] = _pick(model, name, [p["model"][name] for p in parts], rank, world_size, source)
        for holder in HOLDERS:
            if state.get(holder) is not None:
                values = [p[holder][name] for p in parts]
                state[holder]["module"][name] = _pick(model, name, values, rank, world_size, source)
        if name not in indices:
            continue
        saved = [p["optimizer"].get(name) for p in parts]
        if any(entry is None for entry in saved):
            state["optimizer"]["state"].pop(indices[name], None)
            continue
        state["optimizer"]["state"][indices[name]] = {
            key: _pick(model, name, [entry[key] for entry in saved], rank, world_size, source) for key in saved[0]
        }
