"""``sightkit train|eval|predict TASK key=value ...`` and ``sightkit export onnx key=value ...``.

The tasks and their typed configs come from the task registry (:mod:`sightkit.tasks.registry`);
this file parses the ``key=value`` settings into the config (``config=FILE.yaml`` too), hands
it to the runner (:mod:`sightkit.tasks.runner`) and reports bad input as one clear line with
exit status 2. Nothing here imports torch until a command runs or its keys are printed: each
command's list of keys is written when its help is shown (:func:`keys_command`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from sightkit.config import ConfigError, build_config, config_help
from sightkit.tasks.registry import MODES as TASK_MODES
from sightkit.tasks.registry import get_task, list_tasks

#: A table of choices for :func:`run`: name -> (config class, function taking the config).
Mode = dict[str, tuple[type, Callable[..., Any]]]


Settings = Annotated[list[str] | None, typer.Argument(help="key=value settings (listed below)")]
TaskName = Annotated[str, typer.Argument(help=" | ".join(list_tasks()))]


def keys_command(keys: Callable[[], str]) -> type[TyperCommand]:
    """A command class whose help ends with ``keys()`` (the settings), computed only when the
    help is shown: listing them imports the configs, and with them torch."""

    class KeysCommand(TyperCommand):
        def format_epilog(self, ctx: Any, formatter: Any) -> None:
            self.epilog = keys()
            super().format_epilog(ctx, formatter)

    return KeysCommand


def keys_of(configs: dict[str, type]) -> str:
    """The help's list of keys of each config. ``"\\b"`` stops click from re-wrapping the
    paragraph, so each key stays on its own line."""
    return "\n\n".join(f"\b\nkeys of {name}:\n{config_help(config)}" for name, config in configs.items())


def task_configs(mode: str) -> dict[str, type]:
    """``{task: its config class}`` of the tasks that have ``mode`` (imports every task)."""
    configs = {name: getattr(get_task(name), TASK_MODES[mode]) for name in list_tasks()}
    return {name: config for name, config in configs.items() if config is not None}


def guarded(function: Callable[[], Any]) -> Any:
    """Call ``function``; bad input (a config, value or missing-file error) prints one line
    and exits with status 2 (``SIGHTKIT_DEBUG=1``: the traceback instead)."""
    from rich.console import Console

    try:
        return function()
    except (ConfigError, ValueError, FileNotFoundError) as error:
        if os.environ.get("SIGHTKIT_DEBUG"):
            raise
        # soft_wrap: one line however narrow the terminal, so the message stays searchable.
        Console(stderr=True).print(f"[bold red]error:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from None


def run(mode: Mode, what: str, choice: str, settings: list[str] | None) -> Any:
    """Build the config of ``mode[choice]`` from ``settings`` and run it; bad input exits with 2."""
    if choice not in mode:
        return guarded(lambda: _refuse(f"{what} must be one of {', '.join(mode)}, got {choice!r}"))
    config_class, function = mode[choice]
    return guarded(lambda: function(build_config(config_class, settings or [])))


def run_task(mode: str, task_name: str, settings: list[str] | None) -> Any:
    """``sightkit MODE TASK key=value ...`` through the registry and the runner."""

    def go() -> Any:
        from sightkit.tasks import runner

        if task_name not in list_tasks():
            raise ValueError(f"TASK must be one of {', '.join(list_tasks())}, got {task_name!r}")
        task = get_task(task_name)
        config_class = getattr(task, TASK_MODES[mode])
        if config_class is None:
            having = ", ".join(name for name in list_tasks() if getattr(get_task(name), TASK_MODES[mode]))
            raise ValueError(f"task {task_name!r} has no {mode} mode; tasks with one: {having}")
        config = build_config(config_class, settings or [])
        return {"train": runner.train, "eval": runner.evaluate, "predict": runner.predict}[mode](config, task=task)

    return guarded(go)


def _refuse(message: str) -> None:
    raise ValueError(message)


def register(app: typer.Typer) -> None:
    """Add the train, eval, predict and export commands to ``app``."""

    @app.command(cls=keys_command(lambda: keys_of(task_configs("train"))))
    def train(task: TaskName, settings: Settings = None) -> None:
        """Train a model: sightkit train detect model=detr_r18_tiny data=runs/data/shapes epochs=50."""
        run_task("train", task, settings)

    @app.command(name="eval", cls=keys_command(lambda: keys_of(task_configs("eval"))))
    def evaluate(task: TaskName, settings: Settings = None) -> None:
        """Evaluate weights on a dataset: sightkit eval detect weights=runs/x/best.safetensors data=..."""
        run_task("eval", task, settings)

    @app.command(cls=keys_command(lambda: keys_of(task_configs("predict"))))
    def predict(task: TaskName, settings: Settings = None) -> None:
        """Predict on images, folders, globs, videos or URLs: sightkit predict detect weights=... source=..."""
        run_task("predict", task, settings)

    def export_table() -> Mode:
        from sightkit.tasks.export import EXPORTERS, ExportConfig

        return {fmt: (ExportConfig, exporter) for fmt, exporter in EXPORTERS.items()}

    @app.command(cls=keys_command(lambda: keys_of({name: c for name, (c, _) in export_table().items()})))
    def export(fmt: Annotated[str, typer.Argument(help="onnx, pt2 or torchscript")], settings: Settings = None) -> None:
        """Export trained weights: sightkit export onnx weights=runs/x/best.safetensors (also pt2, torchscript)."""
        run(export_table(), "FORMAT", fmt, settings)
