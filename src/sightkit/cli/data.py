"""``sightkit data``: make and check datasets.

``sightkit data synth KIND key=value ...`` writes a synthetic dataset (KIND: shapes, people,
faces) in COCO format; ``sightkit data synth --help`` lists every key of every kind.
``sightkit data check PATH`` reports every problem of a COCO, YOLO or VOC dataset;
``sightkit data convert SRC out=DIR format=coco|yolo|voc`` writes a dataset in another layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sightkit.cli.data_check import CheckConfig, check
from sightkit.config import ConfigError, build_config, config_help
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
    console = Console()
    if kind not in GENERATORS:
        console.print(f"[bold red]error:[/] KIND must be one of {', '.join(GENERATORS)}, got {kind!r}")
        raise typer.Exit(2)
    config_class, generate = GENERATORS[kind]
    try:
        config: Any = build_config(config_class, settings or [])
        paths = generate(config)
    except (ConfigError, ValueError) as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(2) from None
    for name, path in paths.items():
        console.print(f"  {name:<12} {path}")
    console.print(f"wrote {config.images} {kind} images to [bold]{config.out}[/]")
    console.print(f"check them with: sightkit data check {config.out}")


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
    console = Console(soft_wrap=True)  # an error stays on one searchable line
    try:
        config = build_config(ConvertConfig, settings or [])
        if not config.out or config.format not in LAYOUTS:
            raise ConfigError(
                f"out= and format= are required (format: {' | '.join(LAYOUTS)}); got out={config.out!r}, "
                f"format={config.format!r}"
            )
        layout = detect_layout(source)
        summary = convert_dataset(source, config.out, config.format, splits=config.splits or None, link=config.link)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(2) from None
    for split, counts in summary["splits"].items():
        console.print(f"  {split:<10} {counts['images']:>7} images {counts['annotations']:>8} annotations")
    console.print(f"converted {layout} {source} to {config.format} in [bold]{config.out}[/]")
    console.print(f"check it with: sightkit data check {config.out}")
