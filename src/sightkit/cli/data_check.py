"""``sightkit data check PATH [key=value ...]``: list every problem of a COCO, YOLO or VOC dataset.

Exit status: 0 when the dataset is clean, 1 when problems were found, 2 when the command
itself cannot run (a bad setting, a path that does not exist).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from sightkit.cli.tasks import guarded
from sightkit.config import ConfigError, build_config
from sightkit.data.check import PROBLEM_KINDS, CheckReport, check_dataset


@dataclass
class CheckConfig:
    images: str | None = field(
        default=None, metadata={"help": "COCO: folder the JSON file_name values are relative to (default: found)"}
    )
    decode: bool = field(default=True, metadata={"help": "fully decode images to find truncation (false: headers)"})
    workers: int = field(default=8, metadata={"help": "threads that open images"})
    tolerance: float = field(default=0.5, metadata={"help": "pixels a box or keypoint may overshoot the image"})
    limit: int = field(default=100, metadata={"help": "most problems listed in the table (0: all)"})


def check(
    path: Annotated[
        str,
        typer.Argument(
            help="a COCO JSON file or folder (annotations/*.json), a YOLO data.yaml or its folder, a Pascal VOC folder"
        ),
    ],
    settings: Annotated[list[str] | None, typer.Argument(help="key=value settings (listed below)")] = None,
) -> None:
    """Check a COCO, YOLO or Pascal VOC dataset (detection or keypoints) and its images; report every problem."""
    report, config = guarded(lambda: _check(path, settings))
    console = Console(highlight=False)
    for json_path, image_root in report.sources:
        console.print(f"{json_path}: images read from {image_root}", markup=False)
    if report.ok:
        how = "decoded" if report.decoded else "headers read"
        counts = f" in {report.images} images ({how}) and {report.annotations} annotations"
        console.print(Text.assemble(("no problems", "green"), counts))
        return
    console.print(report.table(limit=config.limit or None))
    for kind, count in report.counts().items():
        console.print(f"  {count:>6}  {kind}: {PROBLEM_KINDS[kind]}", markup=False)
    raise typer.Exit(1)


def _check(path: str, settings: list[str] | None) -> tuple[CheckReport, CheckConfig]:
    config = build_config(CheckConfig, settings or [])
    if config.limit < 0:
        raise ConfigError(f"limit must be >= 0, got {config.limit}")
    report = check_dataset(
        path, images=config.images, decode=config.decode, workers=config.workers, tolerance=config.tolerance
    )
    return report, config
