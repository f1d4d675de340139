"""The C library's allocator under PyTorch's CPU tensors: keep freed blocks for reuse.

PyTorch allocates CPU tensors with ``malloc``. glibc serves a block larger than its mmap
threshold (128 KiB at start, raised as such blocks are freed, up to 32 MiB) with a fresh
``mmap`` and unmaps it on ``free``, and hands the free top of its heap back to the system
once it exceeds the trim threshold. An inference loop allocates and frees the same
activations on every batch, so each batch writes into fresh pages, which the kernel faults
in and zeroes one by one. :func:`tune_cpu_allocator` raises both thresholds (``mallopt``), so
that freed blocks stay in the heap and the next batch reuses them: the process keeps its
peak memory instead of returning it between batches, as a caching allocator does (PyTorch's
CUDA allocator; jemalloc and tcmalloc, which PyTorch's CPU performance guide recommends
preloading, do much the same). ``benchmarks/cpu_allocator.py`` measures it on detection
inference (our figures: ``docs/benchmarks.md``).

The command line tunes its own process (``sightkit predict|eval|serve|train ...``); a Python
program calls :func:`sightkit.engine.tune_cpu_allocator` once, first thing. Nothing is changed
where the user chose already (``MALLOC_*`` variables, a ``malloc`` tunable in
``GLIBC_TUNABLES``, jemalloc / tcmalloc in ``LD_PRELOAD``, or ``SIGHTKIT_ALLOCATOR=system``
to keep glibc's defaults), nor off glibc.

This module lives outside :mod:`sightkit.engine` (which re-exports the function) because the
command line calls it before anything else, and importing the engine imports torch.
"""

from __future__ import annotations

import ctypes
import os
import sys

from sightkit._api import export

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap; larger ones are still mapped (and unmapped) apart.
MMAP_THRESHOLD = 1 << 30
#: glibc before 2.35 refuses mmap thresholds above half its 64 MiB heap size: its own maximum.
FALLBACK_MMAP_THRESHOLD = 32 << 20
#: The free top of the heap goes back to the system only beyond this (mallopt takes an int).
TRIM_THRESHOLD = (1 << 31) - 1
# the user's own allocator choices, which are left as they are
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (``gnu_get_libc_version`` and ``mallopt`` found)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has mallopt but other thresholds
        return libc if hasattr(libc, "mallopt") else None
    except (OSError, AttributeError):
        return None


def _user_chose() -> bool:
    """Whether the environment already configures the allocator."""
    preload = os.environ.get("LD_PRELOAD", "")
    return (
        os.environ.get("SIGHTKIT_ALLOCATOR") == "system"
        or any(name in os.environ for name in _USER_SETTINGS)
        or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
        or "jemalloc" in preload
        or "tcmalloc" in preload
    )


@export("engine.tune_cpu_allocator")
def tune_cpu_allocator() -> bool:
    """Keep the memory of freed CPU tensors in the process for reuse (glibc on Linux; see the
    module docstring): blocks up to 1 GiB come from the heap instead of fresh mappings, and
    the heap is trimmed only beyond 2 GiB of free memory at its top.

    Call it once, before the work; it lasts for the process. The command line calls it.

    Returns:
        True if the allocator was tuned; False where nothing was changed: not Linux, not
        glibc, the user's own allocator settings in the environment (or
        ``SIGHTKIT_ALLOCATOR=system``), or glibc refused.
    """
    if not sys.platform.startswith("linux") or _user_chose():
        return False
    libc = _glibc()
    if libc is None:
        return False
    # The mmap threshold first, and the trim threshold only once it is set: setting the trim
    # threshold alone also freezes the mmap threshold at its 128 KiB start, and every larger
    # block is then mapped afresh (detection inference ran twice as slow so, measured).
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or libc.mallopt(M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD)):
        return False
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
