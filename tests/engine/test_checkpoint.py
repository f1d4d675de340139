"""Checkpoints: atomic writes survive a crash or a killed writer, strict loading, RNG states,
last/best/keep-N, safetensors weights."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from sightkit.engine import (
    CheckpointManager,
    load_checkpoint,
    load_model_state,
    load_weights,
    save_checkpoint,
    save_weights,
)
from sightkit.engine.checkpoint import rng_state, set_rng_state


def test_round_trip_with_weights_only(tmp_path) -> None:
    state = {"step": 7, "model": nn.Linear(2, 3).state_dict(), "best": None, "names": ["a", "b"], "t": (1, 2.5)}
    path = save_checkpoint(state, tmp_path / "a" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["best"] is None and loaded["names"] == ["a", "b"] and loaded["t"] == (1, 2.5)
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert load_checkpoint(tmp_path / "a")["step"] == 7  # a run folder means its last.pt
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["last.pt"]  # no temporary file left


def test_crash_between_write_and_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def crash(*args):
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk pulled out"):
        save_checkpoint({"step": 2, "big": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


KILLED_WRITER = """
import os, signal, sys, torch
from sightkit.engine import save_checkpoint
path = sys.argv[1]
real_fsync = os.fsync
def die(fd):
    real_fsync(fd)  # the new bytes are on disk in the temporary file; the rename has not happened
    os.kill(os.getpid(), signal.SIGKILL)
os.fsync = die
save_checkpoint({"step": 2, "weights": torch.ones(100_000)}, path)
"""


def test_killed_writer_leaves_the_previous_checkpoint_loadable(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "weights": torch.zeros(3)}, path)
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    temporaries = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(temporaries) == 1 and temporaries[0].stat().st_size > 400_000  # it died after writing
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], torch.zeros(3))


def test_missing_corrupt_and_pickled_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"corrupt\.pt is not a readable sightkit checkpoint"):
        load_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"optimizer": torch.optim.SGD}, tmp_path / "code.pt")  # a class: refused by weights_only
    with pytest.raises(ValueError, match=r"code\.pt is not a readable sightkit checkpoint"):
        load_checkpoint(tmp_path / "code.pt")


def test_loading_another_models_weights_names_every_kind_of_mismatch() -> None:
    source = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    target = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2), nn.Linear(2, 2))
    message = (
        r"does not fit this Sequential: it was saved from a different model \(missing keys: 3.weight, 3.bias; "
        r"shape mismatches: 0.weight: model \(6, 4\) vs checkpoint \(8, 4\), .*Use the model settings"
    )
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        load_model_state(target, source.state_dict())
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing half-loaded
    extra = {**source.state_dict(), "head.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected keys: head.weight"):
        load_model_state(source, extra)


def test_rng_states_round_trip_through_a_checkpoint(tmp_path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    drawn = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert drawn[:3] == expected[:3] and torch.equal(drawn[3], expected[3])


def test_manager_keeps_last_best_and_n_snapshots(tmp_path) -> None:
    manager = CheckpointManager(tmp_path, keep=2, mode="max")
    for step, metric in [(1, 0.5), (2, 0.7), (3, 0.6), (4, float("nan")), (5, 0.65)]:
        manager.save({"step": step}, step, is_best=manager.update_best(metric))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "last.pt", "step_00000004.pt", "step_00000005.pt"]
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2 and manager.best == 0.7
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 5
    assert load_checkpoint(tmp_path / "step_00000004.pt")["step"] == 4
    restored = CheckpointManager(tmp_path, mode="max")
    restored.load_state_dict(manager.state_dict())
    assert not restored.update_best(0.69) and restored.update_best(0.71)
    low = CheckpointManager(tmp_path / "low", mode="min")
    assert low.update_best(2.0) and low.update_best(1.0) and not low.update_best(1.5)


def test_safetensors_weights_round_trip_with_tied_parameters(tmp_path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.embed.weight
            self.register_buffer("scale", torch.tensor([2.0]))

    model = Tied()
    save_weights(model, tmp_path / "w.safetensors", metadata={"model": "tied"})
    other = Tied()
    load_weights(other, tmp_path / "w.safetensors")
    assert torch.equal(other.embed.weight, model.embed.weight) and other.out.weight is other.embed.weight
    assert torch.equal(other.scale, model.scale)
    save_checkpoint({"model": model.state_dict()}, tmp_path / "last.pt")
    assert torch.equal(load_weights(Tied(), tmp_path / "last.pt").out.weight, model.out.weight)


def test_weights_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"path must end with \.safetensors, got '.*w\.pt'"):
        save_weights(nn.Linear(1, 1), tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError, match=r"weights='.*none\.safetensors': no such file"):
        load_weights(nn.Linear(1, 1), tmp_path / "none.safetensors")
    save_weights(nn.Linear(2, 1), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="different model"):
        load_weights(nn.Linear(3, 1), tmp_path / "w.safetensors")


def _stored_digest(path) -> str:
    tail = path.read_bytes()[-80:]
    assert tail.startswith(b"sightkit-sha256:")
    return tail[16:].decode()


def test_checksum_is_the_sha256_of_the_file_torch_save_writes(tmp_path) -> None:
    import hashlib
    import io

    state = {"step": 3, "w": torch.arange(10.0), "names": ["a"]}
    buffer = io.BytesIO()
    torch.save(state, buffer)  # the same bytes, written by torch alone
    path = save_checkpoint(state, tmp_path / "last.pt")
    assert _stored_digest(path) == hashlib.sha256(buffer.getvalue()).hexdigest()
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])  # still a plain torch.load file


def test_flipped_bytes_are_an_error_not_silently_wrong_weights(tmp_path) -> None:
    path = save_checkpoint({"w": torch.full((1000,), 1.5)}, tmp_path / "last.pt")
    data = bytearray(path.read_bytes())
    at = bytes(data).find(np.float32(1.5).tobytes() * 8) + 3  # inside the tensor's storage
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["w"][0] != 1.5  # torch alone reads a changed value silently
    with pytest.raises(ValueError, match=r"last\.pt is not a readable sightkit checkpoint \(its SHA-256 checksum"):
        load_checkpoint(path)


def test_checkpoints_without_a_checksum_still_load(tmp_path) -> None:
    torch.save({"step": 5}, tmp_path / "old.pt")  # written before checksums existed
    assert load_checkpoint(tmp_path / "old.pt") == {"step": 5}


def test_corrupt_last_names_the_newest_good_snapshot(tmp_path) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    for step in (10, 20, 30):
        manager.save({"step": step}, step)
    (tmp_path / "step_00000030.pt").unlink()  # the newest snapshot is a hard link of last.pt: break both
    (tmp_path / "last.pt").write_bytes(b"")
    snapshot = tmp_path / "step_00000020.pt"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "step_00000020.pt").unlink()
    snapshot.write_bytes(bytes(data))  # step 20 now has flipped bytes too
    expected = (
        r"last\.pt is not a readable sightkit checkpoint \(it is empty \(0 bytes\)\); the newest good snapshot is "
        rf"{tmp_path}/step_00000010\.pt: resume with resume={tmp_path}/step_00000010\.pt"
    )
    with pytest.raises(ValueError, match=expected):
        load_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path / "step_00000010.pt")["step"] == 10
