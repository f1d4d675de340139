"""One writer per run folder: a live holder refuses a second run with its pid, a dead holder's
lock is taken over, stale temporary files go at the start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from engine_toys import Regression, collate, criterion, make_model

from sightkit.engine import RunFolderBusy, RunLock, TrainConfig, Trainer, remove_stale_temporaries

# What RunLock.acquire does in a first run, without importing sightkit (seconds on a busy machine).
HOLDER = """
import fcntl, os, socket, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
handle = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(handle, f"{os.getpid()} {socket.gethostname()}\\n".encode())
print("locked", flush=True)
time.sleep(120)
"""


def _config(tmp_path, **overrides) -> TrainConfig:
    settings = {"out": str(tmp_path / "run"), "steps": 2, "batch": 8, "progress": False, "plot": False}
    return TrainConfig(**{**settings, **overrides})


def _trainer(config: TrainConfig) -> Trainer:
    return Trainer(make_model(), criterion, Regression(), config, collate_fn=collate)


def test_a_second_run_is_refused_with_the_first_ones_pid(tmp_path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=rf"out='.*run' is in use by process {holder.pid}, which is writing"):
            _trainer(_config(tmp_path, exist_ok=True))
    finally:
        holder.kill()
        holder.wait()
    # The operating system released the dead holder's lock: the folder is usable again.
    trainer = _trainer(_config(tmp_path, exist_ok=True))
    trainer.fit()
    assert (tmp_path / "run" / "last.pt").is_file()


def test_a_dead_processs_lock_is_taken_over(tmp_path, capsys) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(f"{pid} {os.uname().nodename}\n")
    lock = RunLock(tmp_path / "run").acquire()
    assert lock.taken_over == pid and lock.held
    assert (tmp_path / "run" / ".lock").read_text().split()[0] == str(os.getpid())
    lock.release()
    assert (tmp_path / "run" / ".lock").read_text() == ""  # emptied, so no one reports it as left behind
    _trainer(_config(tmp_path)).fit()  # a fresh run: the lock file alone does not make the folder "used"


def test_stale_temporaries_are_removed_when_a_run_starts(tmp_path, capsys) -> None:
    _trainer(_config(tmp_path)).fit()
    run = tmp_path / "run"
    for name in (".last.pt.4242.tmp", ".best.pt.77.link", ".metrics.jsonl.4242.tmp"):
        (run / name).write_bytes(b"half a checkpoint")
    (run / "notes.tmp").write_text("the user's own file")
    _trainer(_config(tmp_path, steps=4, resume=True)).fit()
    assert sorted(p.name for p in run.iterdir() if p.name.endswith((".tmp", ".link"))) == ["notes.tmp"]
    assert "removed 3 temporary files that interrupted writes left in" in capsys.readouterr().err
    assert remove_stale_temporaries(tmp_path / "absent") == []
