"""Checkpoints: atomic writes, last/best/keep-N, strict loading, RNG states, safetensors weights.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts written with
``torch.save`` and read with ``torch.load(weights_only=True)``, so that loading one never
runs pickled code. Writes go to a temporary file in the same folder, are flushed to disk
(``fsync``) and then renamed over the target (``os.replace``, atomic on POSIX and
Windows), so a crash at any moment leaves either the old or the new file, never half of one.

Each checkpoint carries the SHA-256 of its own bytes, verified on loading, so that bytes
changed afterwards (a failing disk, a bad copy) are an error instead of silently wrong
weights. ``torch.save`` writes a zip archive; the digest lives in the archive's comment
field (the last bytes of the file), which zip readers, ``torch.load`` included, skip: the
file stays a plain ``torch.load``-able checkpoint, and hard-linked snapshots carry their
digest with them. Files written before checksums existed load unverified.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import random
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sightkit._api import export

LAST = "last.pt"
BEST = "best.pt"
_SNAPSHOT = re.compile(r"^step_(\d+)\.pt$")
# The zip end-of-central-directory record: its signature, and the archive comment that follows
# its 22 bytes (the last 2 of which give the comment's length).
_END_RECORD = b"PK\x05\x06"
_CHECKSUM_TAG = b"sightkit-sha256:"
_TRAILER = 22 + len(_CHECKSUM_TAG) + 64


def _fsync_folder(folder: Path) -> None:
    # The rename itself lives in the folder's entry table; without this a power loss may
    # forget it. Not every platform can open a folder (Windows), which is then skipped.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_atomically(path: Path, write: Any) -> None:
    """Call ``write(temporary_path)`` and move the result to ``path`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes what passes through it on its way to ``handle``, so
    that the digest costs no second read of the file."""

    def __init__(self, handle: io.BufferedWriter) -> None:
        self.handle, self.hash, self.position = handle, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.position += len(data)
        return self.handle.write(data)

    def tell(self) -> int:
        return self.position


def _write_with_checksum(state: Mapping[str, Any], path: Path) -> None:
    with open(path, "wb") as handle:
        writer = _HashingWriter(handle)
        torch.save(dict(state), writer)
        handle.flush()
        with open(path, "rb") as reader:
            reader.seek(-22, os.SEEK_END)
            end = reader.read()
        if end[:4] != _END_RECORD or end[-2:] != b"\x00\x00":
            raise RuntimeError(f"torch.save wrote {path} without the zip end record this checksum relies on")
        # The digest covers the file exactly as torch.save wrote it (comment length 0); the
        # comment then replaces that length field.
        comment = _CHECKSUM_TAG + writer.hash.hexdigest().encode()
        handle.seek(-2, os.SEEK_END)
        handle.write(struct.pack("<H", len(comment)) + comment)


def _stored_digest(path: Path, size: int) -> str | None:
    """The SHA-256 recorded in ``path``'s zip comment, or None for a file without one."""
    if size < _TRAILER:
        return None
    with open(path, "rb") as handle:
        handle.seek(size - _TRAILER)
        tail = handle.read()
    comment = _CHECKSUM_TAG + b"0" * 64
    if (
        tail[:4] != _END_RECORD
        or tail[20:22] != struct.pack("<H", len(comment))
        or not tail[22:].startswith(_CHECKSUM_TAG)
    ):
        return None
    return tail[22 + len(_CHECKSUM_TAG) :].decode("ascii", errors="replace")


def _checksum_problem(path: Path) -> str | None:
    """Why ``path``'s bytes are not those its writer recorded, or None when they are (or when
    it records no digest)."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty (0 bytes)"
    stored = _stored_digest(path, size)
    if stored is None:
        return None
    digest, remaining = hashlib.sha256(), size - _TRAILER + 20
    with open(path, "rb") as handle:
        while remaining > 0:
            chunk = handle.read(min(remaining, 1 << 22))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    digest.update(b"\x00\x00")
    if digest.hexdigest() != stored:
        return "its SHA-256 checksum does not match the one written with it (the bytes changed after saving)"
    return None


@export("engine.save_checkpoint")
def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` (tensors, numbers, strings and containers of them) to ``path`` atomically,
    with the SHA-256 of the file's bytes in its zip comment (see the module docstring).

    Returns:
        The path written.
    """
    path = Path(path)
    _replace_atomically(path, lambda temporary: _write_with_checksum(state, temporary))
    return path


def newest_good_snapshot(folder: str | Path, exclude: Path | None = None) -> Path | None:
    """The ``step_*.pt`` snapshot in ``folder`` with the highest step whose bytes pass their
    checksum and that ``torch.load`` reads (``exclude`` left out); None when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    snapshots = sorted(
        (p for p in folder.iterdir() if _SNAPSHOT.match(p.name) and p != exclude),
        key=lambda p: int(_SNAPSHOT.match(p.name).group(1)),
        reverse=True,
    )
    for snapshot in snapshots:
        try:
            _read_verified(snapshot, "cpu")
        except (OSError, ValueError):
            continue
        return snapshot
    return None


def _read_verified(path: Path, map_location: str | torch.device) -> Any:
    problem = _checksum_problem(path)
    if problem is not None:
        raise ValueError(problem)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(f"{type(error).__name__}: {str(error).splitlines()[0]}") from None


@export("engine.load_checkpoint")
def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    ``path`` may be a run folder, in which case its ``last.pt`` is read.

    Raises:
        FileNotFoundError: nothing at ``path`` (or no ``last.pt`` in the folder).
        ValueError: the file is not a checkpoint (empty, corrupt, its checksum does not match,
            or it holds pickled objects); the message names the newest good ``step_*.pt``
            snapshot in the same folder, if there is one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; give the path of a .pt file written by sightkit or of a run folder "
            f"that holds {LAST}"
        )
    try:
        state = _read_verified(path, map_location)
    except ValueError as error:
        snapshot = newest_good_snapshot(path.parent, exclude=path)
        hint = "" if snapshot is None else f"; the newest good snapshot is {snapshot}: resume with resume={snapshot}"
        raise ValueError(f"{path} is not a readable sightkit checkpoint ({error}){hint}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a checkpoint dict")
    return state


def _describe_mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: model {tuple(expected[k].shape)} vs checkpoint {tuple(state[k].shape)}"
        for k in expected
        if k in state and isinstance(state[k], Tensor) and state[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    return problems


@export("engine.load_model_state")
def load_model_state(model: nn.Module, state: Mapping[str, Tensor], what: str = "the checkpoint") -> None:
    """Load ``state`` into ``model`` strictly, with an error that says what does not fit.

    Raises:
        ValueError: keys missing or unexpected, or shapes differ; the message lists them
            and says that the checkpoint comes from a different model.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of parameter names to tensors, got {type(state).__name__}")
    problems = _describe_mismatch(model, state)
    if problems:
        raise ValueError(
            f"{what} does not fit this {type(model).__name__}: it was saved from a different model "
            f"({'; '.join(problems)}). Use the model settings (model=..., number of classes, ...) of the run "
            "that wrote it, or start a fresh run instead of resuming"
        )
    model.load_state_dict(state)


@export("engine.save_weights")
def save_weights(model: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Export ``model``'s weights (parameters and buffers) to a ``.safetensors`` file, atomically.

    Tied weights are stored once (``safetensors.torch.save_model``); ``metadata`` is a
    str -> str mapping kept in the file's header (e.g. the model name).
    """
    from safetensors.torch import save_model

    from sightkit.engine.distributed import unwrap_model

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path must end with .safetensors, got {str(path)!r}")
    module = unwrap_model(model)
    _replace_atomically(path, lambda temporary: save_model(module, str(temporary), metadata=dict(metadata or {})))
    return path


@export("engine.load_weights")
def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``model`` from a ``.safetensors`` file or a checkpoint (its ``model``
    entry), strictly; returns ``model``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the weights come from a different model (see :func:`load_model_state`).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights={str(path)!r}: no such file; give a .safetensors or .pt file of a run")
    if path.suffix == ".safetensors":
        state = load_file(str(path), device="cpu")
    else:
        checkpoint = load_checkpoint(path)
        if "model" not in checkpoint:
            raise ValueError(f"{path} holds no 'model' entry; it is not a sightkit training checkpoint")
        state = checkpoint["model"]
    load_model_state(model, _untie(model, state), what=str(path))
    return model


def _untie(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add the names that ``safetensors.torch.save_model`` dropped for tied parameters."""
    module_state = model.state_dict(keep_vars=True)
    by_storage: dict[int, str] = {}
    for name, tensor in module_state.items():
        by_storage.setdefault(id(tensor), name)
    for name, tensor in module_state.items():
        kept = by_storage[id(tensor)]
        if name not in state and kept in state:
            state[name] = state[kept]
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG state this process uses: Python, NumPy, torch CPU and (if present) CUDA,
    as tensors and numbers that ``torch.load(weights_only=True)`` accepts."""
    numpy_state = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the RNG states captured by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    key = numpy_state["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@export("engine.CheckpointManager")
class CheckpointManager:
    """The checkpoint files of one run folder: ``last.pt``, ``best.pt`` and ``keep`` snapshots.

    Every :meth:`save` rewrites ``last.pt`` atomically. With ``keep > 0`` it also keeps the
    ``keep`` most recent ``step_XXXXXXXX.pt`` snapshots (hard links to the same bytes where
    the file system allows). :meth:`update_best` tracks the best metric value (``mode="max"``
    or ``"min"``); a save marked ``is_best`` also becomes ``best.pt``.
    """

    def __init__(self, folder: str | Path, keep: int = 0, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.folder = Path(folder)
        self.keep = keep
        self.mode = mode
        self.best: float | None = None

    def update_best(self, value: float) -> bool:
        """Record ``value`` as the best so far if it beats it (NaN never does); True if it did."""
        if value != value:
            return False
        if self.best is not None and not (value > self.best if self.mode == "max" else value < self.best):
            return False
        self.best = float(value)
        return True

    def save(self, state: Mapping[str, Any], step: int, is_best: bool = False) -> None:
        """Write ``state`` as ``last.pt``, as a ``step_*.pt`` snapshot when ``keep > 0``, and as
        ``best.pt`` when ``is_best`` (see :meth:`update_best`)."""
        last = save_checkpoint(state, self.folder / LAST)
        if self.keep > 0:
            self._link(last, self.folder / f"step_{step:08d}.pt")
            snapshots = sorted(p for p in self.folder.iterdir() if _SNAPSHOT.match(p.name))
            for old in snapshots[: -self.keep]:
                old.unlink(missing_ok=True)
        if is_best:
            self._link(last, self.folder / BEST)

    def _link(self, source: Path, target: Path) -> None:
        """Make ``target`` hold ``source``'s bytes: a hard link renamed into place (atomic),
        or an atomic copy where links are not supported."""
        temporary = target.with_name(f".{target.name}.{os.getpid()}.link")
        temporary.unlink(missing_ok=True)
        try:
            os.link(source, temporary)
        except OSError:
            _replace_atomically(target, lambda path: path.write_bytes(source.read_bytes()))
            return
        os.replace(temporary, target)
        _fsync_folder(target.parent)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "mode": self.mode}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
