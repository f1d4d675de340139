"""What a run leaves behind besides checkpoints: TensorBoard events and results.csv that agree with
metrics.jsonl (also after a resume), curves.png panels without COCO's placeholders, progress lines
with rate and ETA, and the closing lines that say where everything is."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import pytest
from engine_toys import Regression, collate, criterion, make_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sightkit.engine import MetricsLog, TrainConfig, Trainer, curves_figure
from sightkit.engine.metrics import format_duration


@dataclass
class TaskConfig(TrainConfig):
    data: str = "runs/data/my shapes"


def _config(tmp_path, **overrides) -> TaskConfig:
    settings = {"out": str(tmp_path / "run"), "steps": 6, "batch": 8, "lr": 1e-2, "log_every": 2, "eval_every": 3}
    settings.update(progress=False, plot=False)
    return TaskConfig(**{**settings, **overrides})


def _fit(config: TrainConfig, **kw) -> Trainer:
    trainer = Trainer(
        make_model(), criterion, Regression(), config, collate_fn=collate, val_data=Regression(10, 1), **kw
    )
    trainer.fit()
    return trainer


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _scalars(run) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _expected_scalars(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key not in ("kind", "step", "epoch"):
                expected.setdefault(f"{record['kind']}/{key}", []).append((record["step"], value))
    return expected


def _assert_scalars_match(run) -> None:
    found, expected = _scalars(run), _expected_scalars(_records(run))
    assert found.keys() == expected.keys()
    for tag, points in expected.items():
        assert [step for step, _ in found[tag]] == [step for step, _ in points], tag
        assert [value for _, value in found[tag]] == pytest.approx([value for _, value in points], rel=1e-6), tag


def _assert_csv_matches(run) -> None:
    records = _records(run)
    with open(run / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(dict.fromkeys(key for record in records for key in record))
    assert list(rows[0].keys()) == columns
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        assert row == {key: str(record[key]) if key in record else "" for key in columns}


def test_event_files_and_csv_hold_what_metrics_jsonl_holds(tmp_path) -> None:
    _fit(_config(tmp_path))
    run = tmp_path / "run"
    assert [r["kind"] for r in _records(run)] == ["train", "val", "train", "train", "val"]
    _assert_scalars_match(run)
    _assert_csv_matches(run)


def test_after_a_resume_events_and_csv_hold_each_step_once(tmp_path) -> None:
    _fit(_config(tmp_path, save_every=2, keep=3))
    run = tmp_path / "run"
    # Back to step 4's snapshot, as after a crash there: steps 5 and 6 are trained and logged again.
    _fit(_config(tmp_path, save_every=2, keep=3, resume=str(run / "step_00000004.pt"), steps=8))
    records = _records(run)
    assert [(r["kind"], r["step"]) for r in records] == [
        ("train", 2), ("val", 3), ("train", 4), ("train", 6), ("val", 6), ("train", 8), ("val", 8)
    ]  # fmt: skip
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # one per run that wrote
    _assert_scalars_match(run)
    _assert_csv_matches(run)


def test_switched_off_writes_neither(tmp_path) -> None:
    _fit(_config(tmp_path, tensorboard=False, csv=False))
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert "results.csv" not in names and not any(n.startswith("events.out.tfevents") for n in names)
    log = MetricsLog(tmp_path / "other" / "metrics.jsonl", enabled=False)
    log.write({"kind": "train", "step": 1, "loss": 1.0})  # a rank other than 0
    assert not (tmp_path / "other").exists()


def test_a_fresh_run_in_a_used_folder_starts_new_logs(tmp_path) -> None:
    _fit(_config(tmp_path))
    _fit(_config(tmp_path, steps=4, exist_ok=True))
    run = tmp_path / "run"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert max(r["step"] for r in _records(run)) == 4
    _assert_scalars_match(run)
    _assert_csv_matches(run)


def _coco_records() -> list[dict]:
    aux = {f"loss_ce_{i}": 0.5 for i in range(5)}
    train = [
        {"kind": "train", "step": s, "epoch": 1, "loss": 2.0 / s, "loss_ce": 1.0 / s, "loss_bbox": 0.5 / s,
         "lr": 1e-3, "it_s": 3.0, "bad_steps": 0, **aux}
        for s in (10, 20, 30)
    ]  # fmt: skip
    val = [
        {"kind": "val", "step": s, "epoch": 1, "AP": s / 100, "AP50": s / 50, "APl": -1.0, "AR100": s / 40,
         "ARl": -1.0, "val_loss": 1.0}
        for s in (10, 30)
    ]  # fmt: skip
    return train + val


def test_curves_have_a_panel_per_group_distinct_colours_and_no_placeholders() -> None:
    figure = curves_figure(_coco_records())
    panels = {axis.get_title(): axis for axis in figure.axes if axis.get_visible()}
    assert list(panels) == ["training losses", "validation losses", "AP", "AR", "learning rate"]
    labels = {title: [line.get_label() for line in axis.get_lines()] for title, axis in panels.items()}
    assert labels["AP"] == ["AP", "AP50"] and labels["AR"] == ["AR100"]  # APl and ARl are only placeholders
    assert labels["training losses"][0] == "auxiliary layers (5)"
    assert labels["training losses"][5:] == ["loss", "loss_ce", "loss_bbox"]
    for title, axis in panels.items():
        assert all(value >= 0 for line in axis.get_lines() for value in line.get_ydata()), title
        named = [line for line in axis.get_lines() if not line.get_label().startswith(("_", "auxiliary"))]
        colours = [line.get_color() for line in named]
        assert len({tuple(c) if not isinstance(c, str) else c for c in colours}) == len(colours), title
    assert list(panels["AP"].get_lines()[0].get_xdata()) == [10, 30]


def test_only_placeholders_of_ap_and_ar_are_dropped() -> None:
    records = [{"kind": "val", "step": 1, "val_nll": -1.0, "APm": -1.0}, {"kind": "val", "step": 2, "val_nll": -2.0}]
    panels = {axis.get_title(): axis for axis in curves_figure(records).axes if axis.get_visible()}
    assert list(panels) == ["validation losses"]  # a negative loss is a value (e.g. RLE's log-likelihood)
    assert list(panels["validation losses"].get_lines()[0].get_ydata()) == [-1.0, -2.0]


@pytest.mark.parametrize(("seconds", "text"), [(42.4, "42s"), (185, "3m05s"), (3720, "1h02m"), (float("inf"), "?")])
def test_format_duration(seconds, text) -> None:
    assert format_duration(seconds) == text


def test_progress_lines_without_a_terminal_carry_rate_and_eta_and_the_run_ends_with_its_results(
    tmp_path, capsys
) -> None:
    _fit(_config(tmp_path, progress=True, plot=True), weights_metadata={"task": "detect"})
    lines = capsys.readouterr().out.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["2/6", "4/6", "6/6"]
    assert all(" it/s  eta " in line for line in progress)
    run = tmp_path / "run"
    assert lines[-2] == (
        f"results in {run}: best.safetensors, last.safetensors, best.pt, last.pt, metrics.jsonl, results.csv, "
        f"curves.png, TensorBoard events (tensorboard --logdir {run})"
    )
    assert lines[-1] == f"next: sightkit eval detect weights={run}/best.safetensors data='runs/data/my shapes'"


def test_the_evaluation_line_shows_placeholders_as_a_dash(tmp_path, capsys) -> None:
    def evaluate(model, loader) -> dict[str, float]:
        return {"AP": 0.25, "APl": -1.0, "val_loss": -1.0}

    _fit(_config(tmp_path, progress=True, steps=2, best_metric="AP", best_mode="max"), evaluate=evaluate)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval step")]
    assert lines[-1] == "eval step 2: AP 0.25  APl -  val_loss -1"
