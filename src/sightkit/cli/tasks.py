"""``sightkit train|eval|predict TASK key=value ...`` and ``sightkit export onnx key=value ...``.

Each task module (``sightkit.tasks.detect``, ...) gives a typed config per mode and the
function that runs it; this file parses the ``key=value`` settings into that config
(``config=FILE.yaml`` too) and reports bad input as one clear line with exit status 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from sightkit.config import ConfigError, build_config, config_help
from sightkit.tasks import detect, face, face_detect, pose, segment
from sightkit.tasks.export import ExportConfig, export_onnx

Mode = dict[str, tuple[type, Callable[..., Any]]]

TRAIN: Mode = {
    "detect": (detect.DetectConfig, detect.train),
    "face": (face.FaceConfig, face.train),
    "face_detect": (face_detect.FaceDetectConfig, face_detect.train),
    "pose": (pose.PoseConfig, pose.train),
    "segment": (segment.SegmentConfig, segment.train),
}
EVAL: Mode = {
    "detect": (detect.DetectEvalConfig, detect.evaluate),
    "face": (face.FaceEvalConfig, face.evaluate),
    "face_detect": (face_detect.FaceDetectEvalConfig, face_detect.evaluate),
    "pose": (pose.PoseEvalConfig, pose.evaluate),
    "segment": (segment.SegmentEvalConfig, segment.evaluate),
}
PREDICT: Mode = {
    "detect": (detect.DetectPredictConfig, detect.predict),
    "face_detect": (face_detect.FaceDetectPredictConfig, face_detect.predict),
    "pose": (pose.PosePredictConfig, pose.predict),
    "segment": (segment.SegmentPredictConfig, segment.predict),
}
EXPORT: Mode = {"onnx": (ExportConfig, export_onnx)}

Settings = Annotated[list[str] | None, typer.Argument(help="key=value settings (listed below)")]


def _keys(mode: Mode) -> str:
    # "\b" stops click from re-wrapping the paragraph, so each key stays on its own line.
    return "\n\n".join(f"\b\nkeys of {name}:\n{config_help(config)}" for name, (config, _) in mode.items())


def run(mode: Mode, what: str, choice: str, settings: list[str] | None) -> Any:
    """Build the config of ``mode[choice]`` from ``settings`` and run it; bad input exits with 2."""
    console = Console(stderr=True)
    if choice not in mode:
        console.print(f"[bold red]error:[/] {what} must be one of {', '.join(mode)}, got {choice!r}")
        raise typer.Exit(2)
    config_class, function = mode[choice]
    try:
        config = build_config(config_class, settings or [])
        return function(config)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        if os.environ.get("SIGHTKIT_DEBUG"):
            raise
        # soft_wrap: one line however narrow the terminal, so the message stays searchable.
        console.print(f"[bold red]error:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add the train, eval, predict and export commands to ``app``."""

    @app.command(epilog=_keys(TRAIN))
    def train(task: Annotated[str, typer.Argument(help=" | ".join(TRAIN))], settings: Settings = None) -> None:
        """Train a model: sightkit train detect model=detr_r18_tiny data=runs/data/shapes epochs=50."""
        run(TRAIN, "TASK", task, settings)

    @app.command(name="eval", epilog=_keys(EVAL))
    def evaluate(task: Annotated[str, typer.Argument(help=" | ".join(EVAL))], settings: Settings = None) -> None:
        """Evaluate weights on a dataset: sightkit eval detect weights=runs/x/best.safetensors data=..."""
        run(EVAL, "TASK", task, settings)

    @app.command(epilog=_keys(PREDICT))
    def predict(task: Annotated[str, typer.Argument(help=" | ".join(PREDICT))], settings: Settings = None) -> None:
        """Predict on an image or a folder and draw the results: sightkit predict detect weights=... source=..."""
        run(PREDICT, "TASK", task, settings)

    @app.command(epilog=_keys(EXPORT))
    def export(fmt: Annotated[str, typer.Argument(help=" | ".join(EXPORT))], settings: Settings = None) -> None:
        """Export trained weights: sightkit export onnx weights=runs/x/best.safetensors."""
        run(EXPORT, "FORMAT", fmt, settings)
