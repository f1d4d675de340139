"""Output paths checked before any work starts.

A training run, an export or an enrolment that learns only when it writes its first file that
``out=`` lies under a regular file, is a device such as ``/dev/full`` or sits in a folder that
refuses new files has wasted everything done before; :func:`check_output` finds it first.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

#: What an output setting names: a folder (created if missing, then written into) or a file.
OUTPUT_KINDS = ("folder", "file")


def check_output(path: str | Path, key: str, kind: str = "folder") -> Path:
    """Check that ``path``, the value of the setting ``key``, can be written as a ``kind``
    (``"folder"``: created if missing and written into; ``"file"``: created or replaced),
    without creating it.

    The nearest folder that exists on the way is tried with a real temporary file (removed at
    once): ``os.access`` says yes to root for any folder, and folders such as ``/proc`` refuse
    new files whatever their modes say.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``path`` is empty, exists as something other than a ``kind`` (a file where
            a folder is wanted, a device), lies under a regular file, or cannot be written.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
    shown = f"{key}={str(path)!r}"
    if not str(path):
        raise ValueError(f"{key}= is empty; give the {kind} to write")
    target = Path(os.path.abspath(path))
    if target.exists():
        if kind == "folder" and not target.is_dir():
            raise ValueError(f"{shown} is {_what(target)}, not a folder; give a folder to write into")
        if kind == "file" and target.is_dir():
            raise ValueError(f"{shown} is a folder; give the file to write")
        if kind == "file" and not target.is_file():
            raise ValueError(f"{shown} is {_what(target)}, not a regular file; give the file to write")
    start = target if kind == "folder" and target.is_dir() else target.parent
    existing = next(folder for folder in (start, *start.parents) if folder.exists())
    if not existing.is_dir():
        raise ValueError(f"{shown} cannot be written: {existing} is {_what(existing)}, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".sightkit-write-test-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or error
        raise ValueError(f"{shown} cannot be written: {existing} refuses new files ({reason})") from None
    if kind == "file" and target.is_file():
        try:
            with open(target, "ab"):  # appending nothing: opened for writing, not changed
                pass
        except OSError as error:
            raise ValueError(f"{shown} cannot be written: {error.strerror or error}") from None
    return Path(path)


def _what(path: Path) -> str:
    """``path``'s kind in words: ``"a file"``, ``"a device"``, ..."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a pipe or socket"
