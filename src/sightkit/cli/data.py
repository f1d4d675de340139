"""``sightkit data``: make and check datasets.

``sightkit data synth KIND key=value ...`` writes a synthetic dataset (KIND: shapes, people,
faces) in COCO format; ``sightkit data synth --help`` lists every key of every kind.
``sightkit data check PATH`` reports every problem of a COCO, YOLO or VOC dataset;
``sightkit data convert SRC out=DIR format=coco|yolo|voc`` writes a dataset in another layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from sightkit.cli.data_check import CheckConfig, check
from sightkit.cli.tasks import run
from sightkit.config import ConfigError, config_help
from sightkit.data.formats import LAYOUTS, convert_dataset, detect_layout
from sightkit.data.synthetic.faces import FacesConfig, synthesize_faces
from sightkit.data.synthetic.people import PeopleConfig, synthesize_people
from sightkit.data.synthetic.shapes import ShapesConfig, synthesize_shapes

GENERATORS: dict[str, tuple[type, Callable[..., dict[str, Path]]]] = {
    "shapes": (ShapesConfig, synthesize_shapes),
    "people": (PeopleConfig, synthesize_people),
    "faces": (FacesConfig, synthesize_faces),
}


def _keys(title: str, config: type) -> str:
    # "\b" stops click from re-wrapping the paragraph, so each key stays on its own line.
    return f"\b\n{title}:\n{config_help(config)}"


data_app = typer.Typer(
    name="data",
    help=(
        "Make, check and convert datasets: sightkit data synth KIND key=value ..., sightkit data check PATH, "
        "sightkit data convert SRC out=DIR format=coco|yolo|voc."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)


@data_app.command(epilog="\n\n".join(_keys(f"keys of {kind}", config) for kind, (config, _) in GENERATORS.items()))
def synth(
    kind: Annotated[str, typer.Argument(help="shapes | people | faces")],
    settings: Annotated[list[str] | None, typer.Argument(help="key=value settings (listed below)")] = None,
) -> None:
    """Write a synthetic dataset with exact labels in COCO format (images/, annotations/)."""
    table = {
        name: (config_class, functools.partial(_synthesize, name)) for name, (config_class, _) in GENERATORS.items()
    }
    run(table, "KIND", kind, settings, outputs={"out": "folder"})


def _synthesize(kind: str, config: Any) -> None:
    paths = GENERATORS[kind][1](config)
    console = Console(soft_wrap=True, highlight=False)
    for name, path in paths.items():
        console.print(f"  {name:<12} {path}", markup=False)
    console.print(Text.assemble(f"wrote {config.images} {kind} images to ", (str(config.out), "bold")))
    console.print(f"check them with: sightkit data check {config.out}", markup=False)


data_app.command(name="check", epilog=_keys("keys", CheckConfig))(check)


@dataclass
class ConvertConfig:
    out: str = field(default="", metadata={"help": "folder to write (new or empty)"})
    format: str = field(default="", metadata={"help": f"layout to write: {' | '.join(LAYOUTS)}"})
    splits: list[str] = field(
        default_factory=list, metadata={"help": "splits to convert, e.g. [train,val] (default: all)"}
    )
    link: bool = field(default=True, metadata={"help": "hard-link images where possible (false: copy them)"})


@data_app.command(epilog=_keys("keys", ConvertConfig))
def convert(
    source: Annotated[str, typer.Argument(help="a COCO, YOLO (.yaml or its folder) or Pascal VOC dataset")],
    settings: Annotated[list[str] | None, typer.Argument(help="key=value settings (listed below)")] = None,
) -> None:
    """Convert a detection (or YOLO/COCO pose) dataset among the COCO, YOLO and Pascal VOC layouts."""
    run(
        {"convert": (ConvertConfig, functools.partial(_convert, source))},
        "MODE",
        "convert",
        settings,
        {"out": "folder"},
    )


def _convert(source: str, config: ConvertConfig) -> None:
    if not config.out or config.format not in LAYOUTS:
        raise ConfigError(
            f"out= and format= are required (format: {' | '.join(LAYOUTS)}); got out={config.out!r}, "
            f"format={config.format!r}"
        )
    layout = detect_layout(source)
    summary = convert_dataset(source, config.out, config.format, splits=config.splits or None, link=config.link)
    console = Console(soft_wrap=True, highlight=False)
    for split, counts in summary["splits"].items():
        console.print(
            f"  {split:<10} {counts['images']:>7} images {counts['annotations']:>8} annotations", markup=False
        )
    console.print(
        Text.assemble(f"converted {layout} {source} to {config.format} in ", (config.out, "bold")), soft_wrap=True
    )
    console.print(f"check it with: sightkit data check {config.out}", markup=False)
