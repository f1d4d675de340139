"""``sightkit data synth``: once in a subprocess as a user runs it, the error paths in-process."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sightkit.cli.app import app
from sightkit.data import CocoDetection


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sightkit", "data", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_synth_shapes_writes_a_readable_dataset(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    result = _run("synth", "shapes", f"out={out}", "images=4", "seed=0", "size=64", "progress=false")
    assert result.returncode == 0, result.stderr
    assert "wrote 4 shapes images" in result.stdout
    train = CocoDetection(out / "images", out / "annotations" / "train.json", masks=True)
    val = CocoDetection(out / "images", out / "annotations" / "val.json")
    assert len(train) == 3 and len(val) == 1
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert all(train[i][1]["boxes"].shape[0] >= 1 for i in range(3))


def test_synth_help_lists_keys_and_bad_input_exits_2(tmp_path: Path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(app, ["data", "synth", "--help"], terminal_width=200).output
    for key in ("max_objects", "max_people", "pairs_per_fold", "val_fraction"):
        assert key in help_text
    wrong_key = runner.invoke(app, ["data", "synth", "shapes", f"out={tmp_path}", "imagez=3"])
    assert wrong_key.exit_code == 2 and "did you mean 'images'" in wrong_key.output
    wrong_kind = runner.invoke(app, ["data", "synth", "circles", f"out={tmp_path}"])
    assert wrong_kind.exit_code == 2 and "KIND must be one of shapes, people, faces, got 'circles'" in wrong_kind.output
    bad_value = runner.invoke(app, ["data", "synth", "people", f"out={tmp_path}", "max_people=0"])
    assert bad_value.exit_code == 2 and "need max_people >= 1" in bad_value.output
