"""Distributed helpers on one process, and DDP equivalence with two real gloo processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_toys import Regression, collate, criterion, make_model
from gloo_launch import free_port, launch
from torch import nn

from sightkit.engine import (
    TrainConfig,
    Trainer,
    all_gather_object,
    all_reduce_mean,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    per_rank_batch,
    reduce_sum,
    unwrap_model,
)

WORKER = Path(__file__).with_name("ddp_worker.py")
STALL_WORKER = Path(__file__).with_name("stall_worker.py")


def test_helpers_are_identities_on_one_process() -> None:
    context = init_distributed("cpu")
    assert (context.rank, context.world_size, context.is_main, context.distributed) == (0, 1, True, False)
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    x = torch.tensor([1.5, -2.0])
    total = reduce_sum(x)
    assert torch.equal(total, x) and total is not x  # a copy: the caller's tensor is never reduced in place
    assert torch.equal(all_reduce_mean(torch.tensor([3, 4])), torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert all_gather_object({"a": 1}) == [{"a": 1}]


def test_unwrap_model_removes_compile_wrappers() -> None:
    class Compiled(nn.Module):  # what torch.compile returns: the original module in _orig_mod
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self._orig_mod = module

    model = nn.Linear(2, 2)
    assert unwrap_model(Compiled(Compiled(model))) is model
    assert unwrap_model(model) is model


@pytest.mark.parametrize(
    ("batch", "world", "accumulate", "expected"), [(8, 2, 1, 4), (8, 2, 2, 2), (12, 3, 4, 1), (5, 1, 1, 5)]
)
def test_per_rank_batch(batch: int, world: int, accumulate: int, expected: int) -> None:
    assert per_rank_batch(batch, world, accumulate) == expected


def test_world_size_that_does_not_divide_the_batch_says_what_to_change() -> None:
    with pytest.raises(ValueError, match=r"batch=10 .* multiple of world size 4 x accumulate 1 = 4; change batch="):
        per_rank_batch(10, 4)
    with pytest.raises(TypeError, match=r"tensor must be a torch\.Tensor, got list"):
        reduce_sum([1.0])


@pytest.mark.slow
def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path) -> None:
    # Two gloo processes with 4 samples each per step (and 2 x 2 with accumulation and
    # no_sync) against one process with all 8: AdamW, 4 steps, the same data order.
    launch(WORKER, tmp_path, 1, 2, world=2)
    single = Trainer(
        make_model(dropout=0),
        criterion,
        Regression(),
        TrainConfig(out=str(tmp_path / "single"), steps=4, batch=8, lr=1e-2, eval_every=2, progress=False, plot=False),
        collate_fn=collate,
        val_data=Regression(10, seed=1),
    )
    metrics = single.fit()
    expected = single.unwrapped.state_dict()
    changed = not torch.equal(expected["0.weight"], make_model(dropout=0).state_dict()["0.weight"])
    assert changed
    for accumulate in (1, 2):
        views = torch.load(tmp_path / f"acc{accumulate}" / "ranks.pt", weights_only=True)
        assert len(views) == 2
        for view in views:
            for key, value in expected.items():
                torch.testing.assert_close(view["params"][key], value, rtol=1e-5, atol=1e-6)
            # Validation is sharded 5 + 5 and reduced: the same numbers as on one process.
            assert view["metrics"] == pytest.approx(metrics, rel=1e-5)
            assert (view["sum"], view["mean"]) == (3.0, 0.5)
        # Only rank 0 wrote the run folder, and its checkpoint holds the unwrapped weights.
        checkpoint = torch.load(tmp_path / f"acc{accumulate}" / "last.pt", weights_only=True)
        assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
        assert not any(key.startswith("module.") for key in checkpoint["model"])
        # One TensorBoard event file and one results.csv: rank 1 wrote none of its own.
        assert len(list((tmp_path / f"acc{accumulate}").glob("events.out.tfevents.*"))) == 1
        assert (tmp_path / f"acc{accumulate}" / "results.csv").is_file()


def _run_stalling_ranks(out: Path, stall: str) -> tuple[list[subprocess.Popen], list[str], float]:
    port, processes = free_port(), []
    started = time.monotonic()
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        command = [sys.executable, str(STALL_WORKER), str(out), "3", stall]
        output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        processes.append(subprocess.Popen(command, env=env, **output))
    try:
        outputs = [process.communicate(timeout=240)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    return processes, outputs, time.monotonic() - started


def _assert_one_error_line(rank: int, process: subprocess.Popen, output: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert process.returncode == 2, output[-3000:]
    assert lines[-1].startswith(f"error: rank {rank} of 2: a collective operation failed ("), output[-3000:]
    assert "after waiting up to ddp_timeout=3 s: another rank stalled or died" in lines[-1]
    assert "Traceback" not in output


@pytest.mark.slow
def test_a_stalled_rank_ends_every_process_with_one_line_after_ddp_timeout(tmp_path) -> None:
    # gloo's default would hold rank 0 for 30 minutes; ddp_timeout=3 s ends it, and rank 1, once
    # it wakes, finds its peer gone. Each prints one line (no traceback) and exits with 2.
    processes, outputs, elapsed = _run_stalling_ranks(tmp_path / "run", "12")
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        _assert_one_error_line(rank, process, output)
    assert elapsed < 120


@pytest.mark.slow
def test_a_dead_rank_ends_the_others_with_one_line(tmp_path) -> None:
    processes, outputs, _ = _run_stalling_ranks(tmp_path / "run", "-1")
    assert processes[1].returncode == 1  # it died (os._exit) in its third step
    _assert_one_error_line(0, processes[0], outputs[0])
