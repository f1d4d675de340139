"""The typer application. Each mode lives in its own module and is registered here.

``sightkit --help`` must stay fast: the task commands (train, eval, predict, export) import
only the task registry, and the other modes (data, face, serve, demo) are imported when they
run or print their own help (:class:`LazyModes`); the root help lists them from the one-line
summaries kept here.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from sightkit.cli import tasks

#: Modes imported on first use: name -> (module, how it attaches to a Typer, one-line help).
#: ``attach`` is the name of a Typer sub-app in the module, or of a ``register(app)`` function.
LAZY_MODES: dict[str, tuple[str, str, str]] = {
    "data": (
        "sightkit.cli.data",
        "data_app",
        "Make, check and convert datasets: data synth KIND ..., data check PATH.",
    ),
    "demo": ("sightkit.cli.app", "register_demo", "Train a small detector on synthetic shapes and show it."),
    "face": ("sightkit.cli.face", "face_app", "Enrol people, identify and verify faces: enroll|identify|verify."),
    "serve": ("sightkit.cli.serve", "register", "Serve a model over HTTP: sightkit serve weights=best.safetensors."),
    "weights": ("sightkit.cli.weights", "weights_app", "Import public checkpoints: weights import SOURCE out=F, list."),
}


class LazyModes(TyperGroup):
    """The root command group: the modes of :data:`LAZY_MODES` are built (their modules
    imported) only when they are called or their help is shown."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_MODES})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in LAZY_MODES:
            return super().get_command(ctx, name)
        module, attach, _ = LAZY_MODES[name]
        target = getattr(importlib.import_module(module), attach)
        if isinstance(target, typer.Typer):
            command = typer.main.get_group(target)
            command.name = name
            return command
        holder = typer.Typer(add_completion=False, rich_markup_mode=None)
        target(holder)
        return typer.main.get_group(holder).commands[name]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_MODES:
                rows.append((name, LAZY_MODES[name][2]))
            else:
                command = super().get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(limit=formatter.width - 6 - len(name))))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="sightkit",
    cls=LazyModes,
    help="Find and recognise things in images. Usage: sightkit MODE [TASK] key=value ...",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
tasks.register(app)


@app.callback()
def _root() -> None:
    """Find and recognise things in images."""


def register_demo(holder: typer.Typer) -> None:
    """Add the demo command to ``holder`` (built on first use: the demo imports the detection task)."""
    from sightkit.cli.demo import DemoConfig, run_demo
    from sightkit.config import config_help

    @holder.command(epilog=f"\b\nkeys:\n{config_help(DemoConfig)}")
    def demo(
        settings: Annotated[list[str] | None, typer.Argument(help="key=value settings (listed below)")] = None,
    ) -> Any:
        """Train a small detector on synthetic shapes, evaluate it and draw its predictions into runs/demo."""
        tasks.run({"demo": (DemoConfig, run_demo)}, "MODE", "demo", settings, outputs={"out": "folder"})


def main() -> None:
    app()
