"""``sightkit train|eval|predict TASK key=value ...`` and ``sightkit export onnx key=value ...``.

The tasks and their typed configs come from the task registry (:mod:`sightkit.tasks.registry`);
this file parses the ``key=value`` settings into the config (``config=FILE.yaml`` too), hands
it to the runner (:mod:`sightkit.tasks.runner`) and reports bad input as one clear line with
exit status 2. Nothing here imports torch until a command runs or its keys are printed: each
command's list of keys is written when its help is shown (:func:`keys_command`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from sightkit.config import build_config, config_help
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


#: What each output key of a command names (:func:`sightkit.outputs.check_output`).
Outputs = dict[str, str]
#: The output of train, eval and predict: the run folder.
RUN_FOLDER: Outputs = {"out": "folder"}


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that bad input or the machine cause, reported as one line: ``ValueError``
    (with :class:`~sightkit.config.ConfigError`, :class:`~sightkit.data.sources.SourceError`,
    :class:`~sightkit.weights.LayoutMismatchError`, a busy run folder), ``TypeError``,
    ``OSError`` (a missing file, :class:`~sightkit.weights.WeightsUnavailableError`,
    :class:`~sightkit.data.coco.ImageReadError`, a refused or full disk), ``ImportError`` (an
    optional extra not installed) and :class:`~sightkit.engine.distributed.DistributedError`.
    Imported only once an error happened: the engine imports torch."""
    from sightkit.engine.distributed import DistributedError

    return ValueError, TypeError, OSError, ImportError, DistributedError


def report_error(error: BaseException) -> None:
    """Print ``error`` on stderr as one line: its lines joined, never read as Rich markup (a
    path such as ``photo [copy].jpg`` or ``data/[/x]`` is printed as it is), never wrapped."""
    from rich.console import Console
    from rich.text import Text

    message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    Console(stderr=True, soft_wrap=True, highlight=False).print(Text.assemble(("error: ", "bold red"), message))


def guarded(function: Callable[[], Any]) -> Any:
    """Call ``function``; an error of :func:`user_errors` prints one line and exits with status 2
    (``SIGHTKIT_DEBUG=1``: the traceback instead)."""
    try:
        return function()
    except Exception as error:
        if os.environ.get("SIGHTKIT_DEBUG") or not isinstance(error, user_errors()):
            raise
        report_error(error)
        from sightkit.engine.distributed import DistributedError  # imported by user_errors() already

        distributed = sys.modules.get("torch.distributed")
        if isinstance(error, DistributedError) and distributed is not None and distributed.is_initialized():
            # The process group is broken: gloo's threads abort the interpreter's normal shutdown
            # ("terminate called without an active exception", status -6), so leave at once.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        raise typer.Exit(2) from None


def check_outputs(config: Any, outputs: Outputs) -> None:
    """Check the output settings of ``config`` (``{key: "folder" | "file"}``) before any work;
    an empty value (a default chosen later) is left to the command."""
    from sightkit.outputs import check_output

    for key, kind in outputs.items():
        if getattr(config, key):
            check_output(getattr(config, key), key, kind)


def run(mode: Mode, what: str, choice: str, settings: list[str] | None, outputs: Outputs | None = None) -> Any:
    """Build the config of ``mode[choice]`` from ``settings``, check its ``outputs`` and run it;
    bad input exits with 2."""
    if choice not in mode:
        return guarded(lambda: _refuse(f"{what} must be one of {', '.join(mode)}, got {choice!r}"))
    config_class, function = mode[choice]

    def go() -> Any:
        config = build_config(config_class, settings or [])
        check_outputs(config, outputs or {})
        return function(config)

    return guarded(go)


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
        check_outputs(config, RUN_FOLDER)
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
