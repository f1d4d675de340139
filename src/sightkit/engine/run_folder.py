"""One writer per run folder: a lock file, and the temporary files a crashed writer left behind.

Two runs writing into the same folder would interleave their checkpoints and metrics. The
first run's rank 0 holds ``OUT/.lock``, a file with its pid and host (emptied when the run
ends); a second run is refused with that pid. The lock is an advisory ``flock`` on that file, which the operating
system releases when the process ends however it ends (``kill -9`` included), so a lock
left by a dead process is simply taken over; where ``flock`` does not exist (Windows) a
lock whose pid no longer runs on this host is taken over instead.

Writes elsewhere in the engine go through temporary files named ``.NAME.PID.tmp`` (or
``.link``) in the run folder; a writer killed before its rename leaves one behind. Whoever
holds the lock is the only writer, so every such file it finds at the start is stale and
is removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path

from sightkit._api import export

try:  # POSIX
    import fcntl
except ImportError:  # Windows: pid-based locks only
    fcntl = None

LOCK = ".lock"
_TEMPORARY = re.compile(r"^\..+\.\d+\.(tmp|link)$")


@export("engine.RunFolderBusy")
class RunFolderBusy(ValueError):
    """Another live process holds the run folder's lock (its ``pid`` and ``host`` are attributes)."""

    def __init__(self, folder: Path, pid: int | None, host: str) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        where = "" if host in ("", socket.gethostname()) else f" on host {host}"
        super().__init__(
            f"out={str(folder)!r} is in use by {who}{where}, which is writing a run there (lock file "
            f"{folder / LOCK}); wait for it to end or stop it, or choose another out="
        )
        self.pid, self.host = pid, host


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _read_owner(path: Path) -> tuple[int | None, str]:
    try:
        fields = path.read_text().split()
    except OSError:
        return None, ""
    pid = int(fields[0]) if fields and fields[0].isdigit() else None
    return pid, fields[1] if len(fields) > 1 else ""


@export("engine.RunLock")
class RunLock:
    """The lock of one run folder, held from :meth:`acquire` to :meth:`release` (or process end).

    Within one process a folder may be locked again (e.g. a run resumed in the same Python
    session after the first one ended); the check is against other processes.

    Attributes:
        taken_over: the pid of a dead process whose lock this one replaced, else None.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.taken_over: int | None = None
        self._handle: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, creating the folder if needed.

        Raises:
            RunFolderBusy: another live process holds it.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        pid, host = _read_owner(self.path)
        if fcntl is not None:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(handle)
                if pid == os.getpid() and host == socket.gethostname():
                    return self  # this process already holds it through another RunLock
                raise RunFolderBusy(self.folder, pid, host) from None
        else:
            mine = pid == os.getpid() and host == socket.gethostname()
            if pid is not None and not mine and (host != socket.gethostname() or _pid_alive(pid)):
                raise RunFolderBusy(self.folder, pid, host)
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if pid is not None and pid != os.getpid():
            self.taken_over = pid
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._handle = handle
        return self

    def release(self) -> None:
        """Give the lock back (nothing if it is not held). The file stays, emptied: removing it
        would let a process that opened it just before lock a file no one else can see."""
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._handle, 0)
        os.close(self._handle)  # closing the descriptor releases the flock
        self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def __del__(self) -> None:
        # At interpreter shutdown module globals may already be gone; the OS releases the lock anyway.
        with contextlib.suppress(Exception):
            self.release()


@export("engine.remove_stale_temporaries")
def remove_stale_temporaries(folder: str | Path) -> list[str]:
    """Delete the ``.NAME.PID.tmp`` / ``.NAME.PID.link`` files in ``folder`` that interrupted
    writers left; call it only while holding the folder's :class:`RunLock`. Returns their names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)
