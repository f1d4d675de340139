"""`sightkit demo` end to end at a tiny size: every picture and file it promises is written."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sightkit.cli.app import app


@pytest.mark.slow
def test_demo_writes_curves_metrics_predictions_and_ops(tmp_path: Path) -> None:
    out, data = tmp_path / "demo", tmp_path / "shapes"
    result = CliRunner().invoke(app, ["demo", f"out={out}", f"data={data}", "images=10", "steps=2", "batch=2"])
    assert result.exit_code == 0, result.output
    assert (data / "annotations" / "val.json").is_file()
    assert (out / "train" / "curves.png").stat().st_size > 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["AP50"] <= 1 or metrics["AP50"] == -1
    val_images = json.loads((data / "annotations" / "val.json").read_text())["images"]
    assert len(list((out / "predictions").glob("*.jpg"))) == len(val_images)
    assert (out / "ops.png").stat().st_size > 0
    assert "predictions" in result.output
