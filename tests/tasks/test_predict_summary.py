"""The last line of ``sightkit predict`` names the output folder in one piece, however narrow
the terminal: Rich breaks long lines at spaces and slashes, and a broken path cannot be copied."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from sightkit.tasks.detect import DetectPredictConfig
from sightkit.tasks.runner import predict
from tests.tasks.tiny import tiny_weights


def test_predict_summary_keeps_the_output_folder_on_one_line(tmp_path: Path) -> None:
    _, weights = tiny_weights("detr_r18_tiny", tmp_path / "w.safetensors")
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "a" / "rather" / "long" / "folder" / "name" / "for" / "the" / "predictions"
    stream = io.StringIO()
    predict(
        DetectPredictConfig(weights=str(weights), source=str(tmp_path / "a.png"), out=str(out)),
        Console(file=stream, width=40),
    )
    last = stream.getvalue().strip().splitlines()[-1]
    assert last.endswith(str(out)) and last.startswith("detect: 1 images or frames")
