"""Checkpoints of rank-local state (Partial FC's sharded centres): exact resume on the same
number of processes, and resume on another number, against runs that never stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_toys import Identities, Recognizer, collate_identities, margin_criterion, sharded_config, whole_head
from gloo_launch import launch

from sightkit.engine import Trainer, load_checkpoint
from sightkit.engine.rank_local import rank_local_names, restore_rank_local
from sightkit.losses.partial_fc import init_centres

WORKER = Path(__file__).with_name("sharded_worker.py")


def test_initial_centres_do_not_depend_on_the_sharding() -> None:
    whole = init_centres(9000, 3, 0, 9000, torch.Generator().manual_seed(4))
    # The documented rule, written out: blocks of 4,096 rows drawn in class order.
    generator = torch.Generator().manual_seed(4)
    blocks = [torch.empty(rows, 3).normal_(0, 0.01, generator=generator) for rows in (4096, 4096, 808)]
    assert torch.equal(whole, torch.cat(blocks))
    # Shards that start and end inside, and across, the 4,096-row blocks.
    for start, count in ((0, 4500), (4500, 4500), (4095, 2), (8192, 808), (3000, 3000)):
        shard = init_centres(9000, 3, start, count, torch.Generator().manual_seed(4))
        assert torch.equal(shard, whole[start : start + count])
    assert whole.std().item() == pytest.approx(0.01, rel=0.02)


def test_one_process_checkpoint_names_the_centres_and_restores_them_unchanged(tmp_path) -> None:
    trainer = Trainer(Recognizer(1.0), margin_criterion, Identities(), sharded_config(tmp_path / "one", steps=3),
                      collate_fn=collate_identities)  # fmt: skip
    trainer.fit()
    assert rank_local_names(trainer.unwrapped) == ["head.weight"]
    state = load_checkpoint(tmp_path / "one" / "last.pt")
    assert state["rank_local"] is None  # one process: the model entry is the whole head
    expected = {key: value.clone() for key, value in state["model"].items()}
    restore_rank_local(state, trainer.unwrapped, trainer.optimizer, rank=0, world_size=1)
    for key, value in expected.items():
        assert torch.equal(state["model"][key], value)


@pytest.mark.slow
def test_sharded_centres_resume_exactly_and_on_another_number_of_processes(tmp_path) -> None:
    launch(WORKER, tmp_path, world=2)
    for rate in (0.5, 1.0):
        folder = tmp_path / f"rate{rate}"
        straight = torch.load(folder / "straight.pt", weights_only=True)
        resumed = torch.load(folder / "resumed.pt", weights_only=True)
        # Two processes stopped at step 3 and resumed on two: bit for bit, sampling included
        # (rate 0.5 draws the sampled centres from the per-rank RNG the checkpoint restores).
        for key, value in straight.items():
            assert torch.equal(resumed[key], value), f"rate {rate}: {key} differs after the resume"
        assert straight["weight"].shape == (6, 4)
        checkpoint = load_checkpoint(folder / "step3.pt")
        assert [part["model"]["head.weight"].shape[0] for part in checkpoint["rank_local"]] == [3, 3]

    # The two-process checkpoint of step 3 resumed on one process: the two shards of the
    # centres, of their AdamW moments and of their EMA become one [6, 4] head, and the run
    # ends where the two-process run ended (no sampling at rate 1, the same global batches).
    one = Trainer(Recognizer(1.0, seed=1), margin_criterion, Identities(),
                  sharded_config(tmp_path / "one", resume=str(tmp_path / "rate1.0" / "step3.pt")),
                  collate_fn=collate_identities)  # fmt: skip
    assert one.step == 3
    one.fit()
    straight = torch.load(tmp_path / "rate1.0" / "straight.pt", weights_only=True)
    for key, value in whole_head(one).items():
        torch.testing.assert_close(value, straight[key], rtol=1e-5, atol=1e-6, msg=f"{key} differs")
