"""The ``sightkit`` command run as a user runs it: a fresh interpreter, output captured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_sightkit(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m sightkit ARGS`` in ``cwd``; the completed process (a failure is returned, not raised)."""
    return subprocess.run(
        [sys.executable, "-m", "sightkit", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
