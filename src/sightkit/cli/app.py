"""The typer application. Each mode lives in its own module and is registered here."""

from __future__ import annotations

import typer

from sightkit.cli.data import data_app

app = typer.Typer(
    name="sightkit",
    help="Find and recognise things in images. Usage: sightkit MODE [TASK] key=value ...",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.add_typer(data_app, name="data")


@app.callback()
def _root() -> None:
    """Find and recognise things in images."""


@app.command()
def demo(out: str = typer.Option("runs/demo", help="folder for the pictures")) -> None:
    """Show sightkit's ops on a real photograph and write the pictures to OUT."""
    from sightkit.cli.demo_ops import run_ops_demo

    run_ops_demo(out)


def main() -> None:
    app()
