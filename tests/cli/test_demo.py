"""`sightkit demo`: every picture and file it promises is written, and the commands it prints
are the ones that ran."""

import json
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sightkit.cli.app import app
from sightkit.cli.demo import DemoConfig, data_command, train_command
from sightkit.config import build_config
from sightkit.data.synthetic.shapes import ShapesConfig
from sightkit.tasks.detect import DetectConfig


def test_the_recipe_warms_up_for_a_tenth_of_the_run_and_drops_refinement_for_vfnet_only() -> None:
    vfnet = build_config(DetectConfig, train_command(DemoConfig(steps=600))[2:])
    assert (vfnet.model, vfnet.model_args, vfnet.steps, vfnet.warmup_steps) == (
        "vfnet_r18_tiny",
        {"refine": False},
        600,
        60,
    )
    assert (vfnet.imgsz, vfnet.max_size, vfnet.eval_every) == (96, 128, 150)
    assert (vfnet.best_metric, vfnet.best_mode) == ("AP", "max")
    dino = build_config(DetectConfig, train_command(DemoConfig(model="dino_r18_tiny", steps=50))[2:])
    assert (dino.model, dino.model_args, dino.warmup_steps) == ("dino_r18_tiny", {}, 5)
    shapes = build_config(ShapesConfig, data_command(DemoConfig(data="d", images=30))[3:])
    assert (shapes.out, shapes.images, shapes.classes, shapes.max_objects, shapes.size) == ("d", 30, 3, 3, 96)


@pytest.mark.slow
def test_demo_writes_curves_metrics_predictions_ops_and_its_commands(tmp_path: Path) -> None:
    out, data = tmp_path / "demo", tmp_path / "shapes"
    result = CliRunner().invoke(app, ["demo", f"out={out}", f"data={data}", "images=10", "steps=2", "batch=2"])
    assert result.exit_code == 0, result.output
    val = json.loads((data / "annotations" / "val.json").read_text())
    assert [c["name"] for c in val["categories"]] == ["circle", "square", "triangle"]
    assert (out / "train" / "curves.png").stat().st_size > 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["AP50"] <= 1 or metrics["AP50"] == -1
    assert len(list((out / "predictions").glob("*.jpg"))) == len(val["images"])
    assert (out / "ops.png").stat().st_size > 0
    assert "predictions" in result.output
    # the summary's paths come whole, however narrow the terminal, to be copied
    assert f"weights          {out / 'train' / 'best.safetensors'}" in result.output.splitlines()
    # commands.sh holds the commands that ran: its train line rebuilds the run's saved config.
    lines = (out / "commands.sh").read_text().splitlines()
    train_line = next(shlex.split(line) for line in lines if line.startswith("sightkit train"))
    ran = yaml.safe_load((out / "train" / "config.yaml").read_text())
    printed = build_config(DetectConfig, train_line[3:])
    assert {key: ran[key] for key in ("model", "model_args", "steps", "imgsz", "lr", "warmup_steps")} == {
        "model": printed.model,
        "model_args": printed.model_args,
        "steps": printed.steps,
        "imgsz": printed.imgsz,
        "lr": printed.lr,
        "warmup_steps": printed.warmup_steps,
    }
    assert f"$ {lines[3]}" in result.output  # printed before it ran
