"""The typer application. Each mode lives in its own module and is registered here."""

from __future__ import annotations

from typing import Annotated

import typer

from sightkit.cli import serve, tasks
from sightkit.cli.data import data_app
from sightkit.cli.demo import DemoConfig, run_demo
from sightkit.cli.face import face_app
from sightkit.cli.weights import weights_app
from sightkit.config import config_help

app = typer.Typer(
    name="sightkit",
    help="Find and recognise things in images. Usage: sightkit MODE [TASK] key=value ...",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


app.add_typer(data_app, name="data")
app.add_typer(face_app, name="face")
app.add_typer(weights_app, name="weights")
tasks.register(app)
serve.register(app)


@app.callback()
def _root() -> None:
    """Find and recognise things in images."""


@app.command(epilog=f"\b\nkeys:\n{config_help(DemoConfig)}")
def demo(
    settings: Annotated[list[str] | None, typer.Argument(help="key=value settings (listed below)")] = None,
) -> None:
    """Train a small DETR on synthetic shapes, evaluate it and draw its predictions into runs/demo."""
    tasks.run({"demo": (DemoConfig, run_demo)}, "MODE", "demo", settings)


def main() -> None:
    app()
