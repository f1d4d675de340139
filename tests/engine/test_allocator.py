"""The CPU allocator tuning: large blocks come from the heap once tuned (measured with glibc's
own accounting, in a fresh process each), the order of the two settings, and nothing changed
where the user chose an allocator or the platform is not glibc."""

import importlib
import os
import subprocess
import sys

import pytest

from sightkit import _allocator as allocator
from sightkit._allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, tune_cpu_allocator

# A child process: glibc's count of bytes in mapped blocks (mallinfo2's hblkhd) grows by a
# 64 MiB malloc when the block is mapped apart, and does not when the heap serves it.
_MAPPED_GROWTH = """
import ctypes, sys
from sightkit._allocator import tune_cpu_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
tuned = tune_cpu_allocator() if sys.argv[1] == "tune" else False
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 << 20)
growth = libc.mallinfo2().hblkhd - before
libc.free(block)
print(tuned, growth)
"""


def _mapped_growth(mode: str) -> tuple[bool, int]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    for name in ("LD_PRELOAD", "GLIBC_TUNABLES", "SIGHTKIT_ALLOCATOR"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", _MAPPED_GROWTH, mode], capture_output=True, text=True, env=env, check=True
    )
    tuned, growth = done.stdout.split()
    return tuned == "True", int(growth)


@pytest.mark.skipif(allocator._glibc() is None or not hasattr(allocator._glibc(), "mallinfo2"), reason="glibc 2.33+")
def test_once_tuned_the_heap_serves_large_blocks() -> None:
    tuned, growth = _mapped_growth("plain")
    assert not tuned and growth >= 64 << 20  # glibc's default: a 64 MiB block is mapped apart (with its header)
    assert _mapped_growth("tune") == (True, 0)


TRIM = (1 << 31) - 1


class FakeLibc:
    """Records mallopt calls; refuses mmap thresholds above ``largest_mmap_threshold``."""

    def __init__(self, largest_mmap_threshold: int) -> None:
        self.largest_mmap_threshold = largest_mmap_threshold
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return int(parameter != M_MMAP_THRESHOLD or value <= self.largest_mmap_threshold)


@pytest.fixture
def no_user_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*allocator._USER_SETTINGS, "LD_PRELOAD", "GLIBC_TUNABLES", "SIGHTKIT_ALLOCATOR"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")


@pytest.mark.usefixtures("no_user_settings")
@pytest.mark.parametrize(
    ("largest", "expected_calls", "tuned"),
    [
        (1 << 40, [(M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, (1 << 31) - 1)], True),
        # glibc before 2.35 caps the threshold at 32 MiB: that, then the trim threshold
        (
            32 << 20,
            [(M_MMAP_THRESHOLD, 1 << 30), (M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, (1 << 31) - 1)],
            True,
        ),
        # no mmap threshold taken: the trim threshold alone would freeze it at 128 KiB, so it is not set
        (0, [(M_MMAP_THRESHOLD, 1 << 30), (M_MMAP_THRESHOLD, 32 << 20)], False),
    ],
    ids=["glibc", "old glibc", "refused"],
)
def test_the_mmap_threshold_first_and_the_trim_threshold_only_after_it(
    monkeypatch: pytest.MonkeyPatch, largest: int, expected_calls: list[tuple[int, int]], tuned: bool
) -> None:
    libc = FakeLibc(largest)
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    assert tune_cpu_allocator() is tuned
    assert libc.calls == expected_calls


@pytest.mark.usefixtures("no_user_settings")
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "100000"),
        ("MALLOC_MMAP_THRESHOLD_", "100000"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=100000"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        ("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4"),
        ("SIGHTKIT_ALLOCATOR", "system"),
    ],
)
def test_the_users_own_allocator_settings_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    libc = FakeLibc(1 << 40)
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    monkeypatch.setenv(variable, value)
    assert tune_cpu_allocator() is False and libc.calls == []


@pytest.mark.usefixtures("no_user_settings")
def test_nothing_is_changed_off_linux_or_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc(1 << 40)
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert tune_cpu_allocator() is False and libc.calls == []
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(allocator, "_glibc", lambda: None)  # musl, or no C library found
    assert tune_cpu_allocator() is False


def test_the_command_line_tunes_its_process(monkeypatch: pytest.MonkeyPatch) -> None:
    cli_app = importlib.import_module("sightkit.cli.app")  # sightkit.cli.app is also the Typer app's name

    order: list[str] = []
    monkeypatch.setattr(cli_app, "tune_cpu_allocator", lambda: order.append("tune"))
    monkeypatch.setattr(cli_app, "app", lambda: order.append("run"))
    cli_app.main()
    assert order == ["tune", "run"]
