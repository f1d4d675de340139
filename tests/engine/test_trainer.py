"""The Trainer: exact resume, accumulation, loss weights, the non-finite guard, run folder, bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from engine_toys import Regression, collate, criterion, make_model
from torch import nn

from sightkit.config import ConfigError, build_config
from sightkit.engine import (
    TrainConfig,
    Trainer,
    all_gather_object,
    load_checkpoint,
    load_weights,
)


def _config(tmp_path, name: str, **overrides) -> TrainConfig:
    settings = {"out": str(tmp_path / name), "epochs": 2, "batch": 8, "lr": 1e-2, "log_every": 2}
    settings.update(progress=False, plot=False)
    settings.update(overrides)
    return TrainConfig(**settings)


class CrashingCriterion:
    """The toy criterion, raising on its ``crash_at``-th training call (counting from 1)."""

    def __init__(self, crash_at: int) -> None:
        self.crash_at, self.calls = crash_at, 0

    def __call__(self, outputs, targets):
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.crash_at:
                raise RuntimeError("simulated crash")
        return criterion(outputs, targets)


def _trainer(config: TrainConfig, model=None, crit=criterion, **kw) -> Trainer:
    return Trainer(model or make_model(), crit, Regression(), config, collate_fn=collate, **kw)


def _assert_states_equal(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            _assert_states_equal(x, y, f"{where}.{key}")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"{where}.{key} differs"
        else:
            assert x == y, f"{where}.{key}: {x} != {y}"


def test_stop_and_resume_equals_uninterrupted_run(tmp_path) -> None:
    # 48 samples / batch 8 = 6 steps per epoch, 12 steps in all; checkpoints every 5 steps;
    # dropout, shuffling, EMA and SWA all draw on or depend on the saved state.
    settings = {"ema": True, "ema_tau": 3.0, "ema_decay": 0.9, "swa_start": 4, "swa_every": 3, "save_every": 5}
    straight = _trainer(_config(tmp_path, "straight", **settings))
    straight.fit()

    config = _config(tmp_path, "stopped", **settings)
    crashing = _trainer(config, crit=CrashingCriterion(crash_at=8))  # dies inside step 8, after the step-5 save
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit()
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["step"] == 5  # mid-epoch: 5 of 6

    resumed = _trainer(dataclasses.replace(config, resume=True), model=make_model(seed=123))
    assert resumed.step == 5
    resumed.fit()

    assert resumed.step == straight.step == 12
    _assert_states_equal(straight.unwrapped.state_dict(), resumed.unwrapped.state_dict(), "model")
    _assert_states_equal(straight.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")
    _assert_states_equal(straight.ema.state_dict(), resumed.ema.state_dict(), "ema")
    _assert_states_equal(straight.swa.state_dict(), resumed.swa.state_dict(), "swa")
    # The records of steps 6-7 that the crashed run logged were dropped and logged again once.
    steps = [r["step"] for r in resumed.log.read() if r["kind"] == "train"]
    assert steps == sorted(set(steps)) == [2, 4, 6, 8, 10, 12]


def test_gradient_accumulation_equals_the_full_batch(tmp_path) -> None:
    runs = []
    for accumulate in (1, 2, 4):
        trainer = _trainer(_config(tmp_path, f"acc{accumulate}", accumulate=accumulate), model=make_model(dropout=0))
        trainer.fit()
        runs.append(trainer.unwrapped.state_dict())
    for other in runs[1:]:
        for key, value in runs[0].items():
            torch.testing.assert_close(other[key], value, rtol=1e-5, atol=1e-6)


def test_loss_weights_are_applied_once_and_unweighted_losses_only_logged(tmp_path) -> None:
    weighted = _trainer(_config(tmp_path, "weighted", steps=4), loss_weights={"mse": 2.0})
    weighted.fit()

    def doubled_mse(outputs, targets):
        return {"mse2": 2.0 * criterion(outputs, targets)["mse"]}

    reference = _trainer(_config(tmp_path, "reference", steps=4), crit=doubled_mse)
    reference.fit()
    _assert_states_equal(weighted.unwrapped.state_dict(), reference.unwrapped.state_dict())
    record = next(r for r in weighted.log.read() if r["kind"] == "train")
    assert record["loss"] == pytest.approx(2.0 * record["mse"], rel=1e-6)
    assert "l1" in record  # logged, not optimised


def _nan_criterion(nan_calls: set[int]):
    calls = []

    def crit(outputs, targets):
        calls.append(None)
        losses = criterion(outputs, targets)
        if len(calls) in nan_calls:
            losses["mse"] = losses["mse"] * float("nan")
        return losses

    return crit


def test_non_finite_step_leaves_parameters_optimiser_and_ema_untouched(tmp_path) -> None:
    trainer = _trainer(_config(tmp_path, "nan", ema=True, ema_tau=0.0, ema_decay=0.5), crit=_nan_criterion({2}))
    batches = iter(trainer.train_loader)
    taken, _ = trainer.train_step([next(batches)])
    assert taken
    optimizer_state = trainer.optimizer.state_dict()["state"]
    before = {
        "model": {k: v.clone() for k, v in trainer.unwrapped.state_dict().items()},
        "ema": {k: v.clone() for k, v in trainer.ema.module.state_dict().items()},
        "optimizer": {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer_state.items()},
    }
    taken, losses = trainer.train_step([next(batches)])
    assert not taken and math.isnan(float(losses["loss"]))
    _assert_states_equal(before["model"], trainer.unwrapped.state_dict())
    _assert_states_equal(before["ema"], trainer.ema.module.state_dict())
    _assert_states_equal(before["optimizer"], trainer.optimizer.state_dict()["state"])
    assert trainer.bad_in_row == trainer.bad_total == 1
    taken, _ = trainer.train_step([next(batches)])
    assert taken and trainer.bad_in_row == 0 and trainer.bad_total == 1
    assert not torch.equal(before["model"]["0.weight"], trainer.unwrapped.state_dict()["0.weight"])


def test_non_finite_losses_in_a_row_stop_with_a_clear_message(tmp_path) -> None:
    model = make_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(_config(tmp_path, "nan", max_bad_steps=3), model=model, crit=_nan_criterion(set(range(1, 100))))
    message = r"not finite for 3 optimiser steps in a row.*parameters are those of step 0"
    with pytest.raises(FloatingPointError, match=message):
        trainer.fit()
    _assert_states_equal(initial, trainer.unwrapped.state_dict())


def test_run_folder_holds_config_metrics_checkpoints_weights_and_plot(tmp_path) -> None:
    val = Regression(size=10, seed=1)

    def evaluate(model: nn.Module, loader) -> dict[str, float]:
        errors = [(model(x) - torch.stack([t["y"] for t in targets])).square().flatten() for x, targets in loader]
        errors = torch.cat(all_gather_object(torch.cat(errors)))  # every rank's shard
        return {"mse_all": errors.mean().item(), "images": float(len(errors))}

    config = _config(tmp_path, "run", epochs=3, ema=True, ema_tau=2.0, best_metric="mse_all", best_mode="min")
    config.plot = True
    trainer = _trainer(config, val_data=val, evaluate=evaluate)
    metrics = trainer.fit()
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl", "last.pt", "best.pt", "curves.png"}
    assert build_config(TrainConfig, [f"config={out / 'config.yaml'}"]) == config
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val_records = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val_records] == [6, 12, 18]  # once per epoch
    assert all(r["images"] == 10 for r in val_records)
    assert metrics == {k: v for k, v in val_records[-1].items() if k not in ("kind", "step", "epoch")}
    best = min(val_records, key=lambda r: r["mse_all"])
    best_checkpoint = load_checkpoint(out / "best.pt")
    assert best_checkpoint["step"] == best["step"]
    assert best_checkpoint["checkpoints"]["best"] == best["mse_all"]
    # best.safetensors holds the evaluated (EMA) weights of that step.
    exported = load_weights(make_model(seed=5), out / "best.safetensors").state_dict()
    _assert_states_equal(best_checkpoint["ema"]["module"], exported)


def test_default_evaluation_is_the_weighted_validation_loss(tmp_path) -> None:
    val = Regression(size=10, seed=1)
    trainer = _trainer(_config(tmp_path, "val", steps=2), val_data=val, loss_weights={"mse": 1.0, "l1": 0.5})
    metrics = trainer.fit()
    model = trainer.unwrapped.eval()
    with torch.no_grad():
        losses = criterion(model(val.x), [{"y": y} for y in val.y])
    assert metrics["val_mse"] == pytest.approx(losses["mse"].item(), rel=1e-5)
    assert metrics["val_l1"] == pytest.approx(losses["l1"].item(), rel=1e-5)
    assert metrics["val_loss"] == pytest.approx(losses["mse"].item() + 0.5 * losses["l1"].item(), rel=1e-5)


def test_bf16_autocast_on_cpu(tmp_path) -> None:
    seen = []

    def crit(outputs, targets):
        seen.append(outputs.dtype)
        return criterion(outputs, targets)

    trainer = _trainer(_config(tmp_path, "bf16", steps=2, amp="bf16"), crit=crit)
    trainer.fit()
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert trainer.bad_total == 0
    assert all(p.dtype == torch.float32 for p in trainer.unwrapped.parameters())  # master weights stay fp32


# ---------------------------------------------------------------------------- bad input


def test_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"precious")
    with pytest.raises(ValueError, match=r"already holds files \(last.pt\); continue that run with resume=true"):
        _trainer(_config(tmp_path, "run"))
    assert (out / "last.pt").read_bytes() == b"precious"
    _trainer(_config(tmp_path, "run", exist_ok=True))  # allowed when asked for


def test_missing_resume_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"resume='.*nope.pt': no checkpoint at .*drop resume="):
        _trainer(_config(tmp_path, "run", resume=str(tmp_path / "nope.pt")))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*last.pt"):
        _trainer(_config(tmp_path, "empty", resume=True))


def test_resuming_with_another_model_names_the_mismatch_and_keeps_the_files(tmp_path) -> None:
    _trainer(_config(tmp_path, "run", steps=2)).fit()
    out = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 1))
    with pytest.raises(ValueError, match=r"different model \(shape mismatches: 0.weight: model \(32, 8\) vs check"):
        _trainer(_config(tmp_path, "run", steps=2, resume=True), model=other)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_batch_that_does_not_split_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"batch=10 .* multiple of world size 1 x accumulate 4 = 4"):
        _trainer(_config(tmp_path, "run", batch=10, accumulate=4))


def test_unknown_config_key_suggests_the_closest(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'warmup'; did you mean 'warmup_steps'"):
        build_config(TrainConfig, ["warmup=100"])
    assert build_config(TrainConfig, ["resume=true"]).resume is True
    assert build_config(TrainConfig, ["resume=runs/a/last.pt"]).resume == "runs/a/last.pt"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"amp": "fp16"}, "amp=fp16 needs a CUDA device"),
        ({"amp": "fp8"}, "amp must be one of none, bf16, fp16; got 'fp8'"),
        ({"eval_weights": "ema"}, "eval_weights=ema needs ema=true"),
        ({"epochs": 0}, "epochs=0 and steps=0 leave nothing to train"),
        ({"batch": 64}, "train_data has 48 samples, fewer than one optimiser step needs"),
    ],
)
def test_bad_settings_are_named(tmp_path, overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        _trainer(_config(tmp_path, "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_loss_weight_for_a_loss_the_criterion_does_not_return(tmp_path) -> None:
    trainer = _trainer(_config(tmp_path, "run", steps=1), loss_weights={"mse": 1.0, "giou": 2.0})
    with pytest.raises(ValueError, match=r"loss_weights names \['giou'\].*returns \['l1', 'mse'\]"):
        trainer.fit()


def test_dict_inputs_are_passed_as_keyword_arguments_and_weights_carry_metadata(tmp_path) -> None:
    from safetensors import safe_open

    class Masked(nn.Module):  # DETR-style: model(images=..., mask=...)
        def __init__(self) -> None:
            super().__init__()
            self.body = make_model(dropout=0)

        def forward(self, images, mask):
            return self.body(images * mask)

    def collate_dict(samples):
        images, targets = collate(samples)
        return {"images": images, "mask": torch.ones_like(images)}, targets

    config = _config(tmp_path, "dict", steps=2)
    reference = _trainer(config, model=make_model(dropout=0))
    reference.fit()
    trainer = Trainer(
        Masked(), criterion, Regression(), dataclasses.replace(config, out=str(tmp_path / "dict2")),
        collate_fn=collate_dict, weights_metadata={"model": "masked"},
    )  # fmt: skip
    trainer.fit()
    for key, value in reference.unwrapped.state_dict().items():
        assert torch.equal(trainer.unwrapped.state_dict()[f"body.{key}"], value)
    with safe_open(str(tmp_path / "dict2" / "last.safetensors"), "pt") as handle:
        assert handle.metadata() == {"model": "masked"}


def test_empty_loss_weights_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="loss_weights is empty; name at least one loss"):
        _trainer(_config(tmp_path, "run"), loss_weights={})
