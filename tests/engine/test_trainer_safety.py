"""The Trainer with bad data and changed settings: the pre-flight image check (on_error=stop|skip,
check_data), resume's settings comparison, a corrupt last.pt, the warm-up cap."""

from __future__ import annotations

import json
import math

import pytest
import torch
from bad_images import cut, write_jpeg
from engine_toys import Regression, collate, criterion, make_model
from torch.utils.data import Dataset

from sightkit.data import ImageReadError, read_image
from sightkit.engine import TrainConfig, Trainer, save_checkpoint


class ImageSamples(Dataset):
    """Samples read from image files: ``x`` [8] from the mean colour, ``y`` from the index."""

    def __init__(self, paths) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        colour = read_image(self.paths[index]).float().mean(dim=(1, 2)) / 255
        return torch.cat([colour, colour, colour[:2]]), {"y": torch.tensor([float(index % 3)])}

    def image_path(self, index: int):
        return self.paths[index]


class CountingCriterion:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, outputs, targets):
        self.calls += 1
        return criterion(outputs, targets)


@pytest.fixture
def images(tmp_path):
    """16 JPEGs of 32x32: number 3 truncated, 7 missing, 9 of 50x50 (over max_pixels=2000 below)."""
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [write_jpeg(folder / f"{i:02d}.jpg", 32, 32, seed=i) for i in range(16)]
    cut(paths[3])
    paths[7].unlink()
    write_jpeg(paths[9], 50, 50)
    return paths


def _config(tmp_path, **overrides) -> TrainConfig:
    settings = {"out": str(tmp_path / "run"), "epochs": 1, "batch": 4, "lr": 1e-2, "log_every": 1, "max_pixels": 2000}
    settings.update(progress=False, plot=False)
    return TrainConfig(**{**settings, **overrides})


def _records(tmp_path, kind: str = "train") -> list[dict]:
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_stop_lists_every_bad_image_in_one_line_before_the_first_step(tmp_path, images) -> None:
    counting = CountingCriterion()
    with pytest.raises(ValueError) as caught:
        Trainer(make_model(), counting, ImageSamples(images), _config(tmp_path), collate_fn=collate)
    message = str(caught.value)
    assert "\n" not in message and counting.calls == 0
    assert message.startswith("check_data: 3 of 16 image files cannot be used: ")
    assert f"{images[3]} (truncated JPEG: the end-of-image marker is missing (the file was cut short))" in message
    assert f"{images[7]} (no such file)" in message
    assert f"{images[9]} (it has 50x50 = 2,500 pixels, more than max_pixels=2,000" in message
    assert "set on_error=skip to train without them" in message and "check_data=false" in message


def test_validation_images_are_checked_too(tmp_path, images) -> None:
    good = [p for i, p in enumerate(images) if i not in (3, 7, 9)]
    with pytest.raises(ValueError, match=r"check_data: 1 of 14 image files cannot be used: .*03\.jpg \(truncated"):
        Trainer(make_model(), criterion, ImageSamples(good), _config(tmp_path), val_data=ImageSamples([images[3]]))


def test_without_the_check_a_bad_image_stops_the_run_when_it_is_read(tmp_path, images) -> None:
    trainer = Trainer(
        make_model(), criterion, ImageSamples(images), _config(tmp_path, check_data=False), collate_fn=collate
    )
    with pytest.raises(ImageReadError):
        trainer.fit()


def test_skip_leaves_bad_images_out_before_training(tmp_path, images, capsys) -> None:
    counting = CountingCriterion()
    config = _config(tmp_path, on_error="skip")
    trainer = Trainer(make_model(), counting, ImageSamples(images), config, collate_fn=collate)
    assert trainer.steps_per_epoch == 13 // 4
    trainer.fit()
    assert counting.calls == 3 and [r["bad_samples"] for r in _records(tmp_path)] == [3, 3, 3]
    assert "on_error=skip: 3 of 16 training samples left out" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_replaces_images_that_fail_during_training_and_counts_them(tmp_path, images, workers) -> None:
    config = _config(tmp_path, on_error="skip", check_data=False, workers=workers)
    trainer = Trainer(make_model(), criterion, ImageSamples(images), config, collate_fn=collate)
    trainer.fit()
    # 16 samples, 4 full steps: every sample is read once, the 2 unreadable ones replaced by their
    # successors (the dataset reads with read_image's default pixel limit, so the 50x50 image is fine).
    assert [r["bad_samples"] for r in _records(tmp_path)][-1] == 2
    assert len(_records(tmp_path)) == 4


def _regression(config: TrainConfig, **kw) -> Trainer:
    return Trainer(make_model(), criterion, Regression(), config, collate_fn=collate, **kw)


def _run_config(tmp_path, **overrides) -> TrainConfig:
    settings = {"out": str(tmp_path / "run"), "steps": 4, "batch": 8, "lr": 1e-2, "save_every": 2, "log_every": 1}
    settings.update(progress=False, plot=False)
    return TrainConfig(**{**settings, **overrides})


def test_resume_with_other_settings_is_refused_and_lists_them(tmp_path) -> None:
    _regression(_run_config(tmp_path)).fit()
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    message = (
        r"resume: this run's settings differ from those .*last\.pt was written with: lr: 0\.01 -> 0\.02; seed: 0 -> 3"
    )
    with pytest.raises(ValueError, match=message + r"\. .*set resume_override=true"):
        _regression(_run_config(tmp_path, resume=True, lr=2e-2, seed=3))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    with pytest.warns(UserWarning, match=r"resume_override=true: resuming .* lr: 0\.01 -> 0\.02"):
        trainer = _regression(_run_config(tmp_path, resume=True, lr=2e-2, resume_override=True))
    assert trainer.step == 4


def test_resume_may_train_longer_and_stretches_the_schedule(tmp_path, capsys) -> None:
    _regression(_run_config(tmp_path)).fit()
    _regression(_run_config(tmp_path, resume=True, steps=8, workers=0, log_every=2)).fit()
    err = capsys.readouterr().err
    assert "note: resume: steps: 4 -> 8 (training longer or shorter is what resuming is for" in err
    assert "log_every" in err
    lr_at = {r["step"]: r["lr"] for r in _records(tmp_path)}
    # Cosine over the new 8 steps (no warm-up): the old 4-step schedule would give 0 from step 4 on.
    assert lr_at[6] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 6 / 8)), rel=1e-9)


def test_resuming_a_zero_byte_last_checkpoint_names_the_newest_good_snapshot(tmp_path) -> None:
    _regression(_run_config(tmp_path, keep=2)).fit()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("step_*.pt")) == ["step_00000002.pt", "step_00000004.pt"]
    (run / "last.pt").write_bytes(b"")  # step 4's snapshot shares its bytes (a hard link): both are lost
    expected = (
        r"last\.pt is not a readable sightkit checkpoint \(it is empty \(0 bytes\)\); the newest good snapshot is "
    )
    expected += rf".* resume={run}/step_00000002\.pt"
    with pytest.raises(ValueError, match=expected):
        _regression(_run_config(tmp_path, keep=2, resume=True))
    trainer = _regression(_run_config(tmp_path, keep=2, resume=str(run / "step_00000002.pt")))
    assert trainer.step == 2


def test_a_warm_up_longer_than_a_tenth_of_the_run_is_capped(tmp_path) -> None:
    with pytest.warns(UserWarning, match=r"warmup_steps=100 is more than a tenth of this run's 20 .* over 2 steps"):
        trainer = _regression(_run_config(tmp_path, steps=20, warmup_steps=100, save_every=0))
    trainer.fit()
    lr_at = {r["step"]: r["lr"] for r in _records(tmp_path)}
    assert lr_at[1] == pytest.approx(1e-2 * (0.001 + 0.999 * 1 / 2), rel=1e-9)  # linear warm-up over 2 steps
    assert lr_at[2] == pytest.approx(1e-2, rel=1e-9)  # then the cosine starts at the full rate


def test_settings_that_the_checkpoints_version_did_not_have_are_noted_not_refused(tmp_path, capsys) -> None:
    _regression(_run_config(tmp_path)).fit()
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["config"]["ddp_timeout"]  # as an older sightkit wrote it
    state["config"]["retired_key"] = 1
    save_checkpoint(state, last)
    assert _regression(_run_config(tmp_path, resume=True)).step == 4
    err = capsys.readouterr().err
    assert "note: resume: ddp_timeout: not a setting of the version that wrote the checkpoint; this run uses 600" in err
    assert "retired_key: not a setting of the version that wrote the checkpoint; this run drops 1" in err


def test_skip_leaves_bad_validation_images_out_and_keeps_the_datasets_attributes(tmp_path, images) -> None:
    train = ImageSamples([p for i, p in enumerate(images) if i not in (3, 7, 9)])
    val = ImageSamples(images[:8])
    val.uses_detections = False  # what pose evaluation reads from loader.dataset
    seen = []

    def evaluate(model, loader) -> dict[str, float]:
        seen.append((loader.dataset.uses_detections, [t["y"].item() for _, targets in loader for t in targets]))
        return {"val_loss": 0.0}

    config = _config(tmp_path, on_error="skip", steps=1)
    Trainer(make_model(), criterion, train, config, collate_fn=collate, val_data=val, evaluate=evaluate).fit()
    # Validation samples 0..7 without 3 and 7 (truncated, missing); y is the index modulo 3.
    assert seen == [(False, [float(i % 3) for i in (0, 1, 2, 4, 5, 6)])]
