"""Start worker scripts as the processes of one gloo group, with the environment ``torchrun``
would give them, and fail with every failing rank's output (shared by the multi-process tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker: Path, *args: object, world: int = 2, timeout: float = 300) -> list[str]:
    """Run ``python worker *args`` as ranks ``0 .. world - 1`` (one thread each); returns each
    rank's output. A rank that fails or outlives ``timeout`` seconds fails the test, and no
    process is left behind (a hung collective would otherwise hang the suite)."""
    port = free_port()
    processes = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        # Workers import the test helpers as pytest's `pythonpath` lets the tests do.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(worker.parent), env.get("PYTHONPATH")]))
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
        command = [sys.executable, str(worker), *map(str, args)]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outputs = [process.communicate(timeout=timeout)[0].decode() for process in processes]
    finally:
        for process in processes:
            process.kill()
    failures = [
        f"rank {rank} exited with {process.returncode}:\n{output[-3000:]}"
        for rank, (process, output) in enumerate(zip(processes, outputs, strict=True))
        if process.returncode != 0
    ]
    assert not failures, "\n".join(failures)
    return outputs
