"""The task registry: one :class:`Task` object per task, looked up by name.

A task declares its config classes (train, eval, predict), how to build the parts a training
run needs (:class:`TrainingParts`), what its evaluation reads (:class:`EvalPlan`), how a
weights file becomes a :class:`~sightkit.Predictor` and its export spec. One runner
(:mod:`sightkit.tasks.runner`) does train / eval / predict for every task; the command line,
``sightkit export onnx`` and ``sightkit serve`` read this registry instead of keeping tables.

The built-in tasks are imported only when first asked for (``get_task``), so that the command
line's help does not import torch. A new task is one module that ends with
``register_task(MyTask())``, plus one line in :data:`BUILTIN` (or a call to
:func:`register_task` before use, for tasks outside sightkit).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from rich.console import Console
    from torch import nn
    from torch.utils.data import Dataset

    from sightkit.predictor import Predictor
    from sightkit.tasks.export import ExportSpec

#: The built-in tasks and the module that registers each (imported on first use).
BUILTIN: dict[str, str] = {
    "detect": "sightkit.tasks.detect",
    "face": "sightkit.tasks.face",
    "face_detect": "sightkit.tasks.face_detect",
    "pose": "sightkit.tasks.pose",
    "segment": "sightkit.tasks.segment",
}

#: The modes that run a task, and the attribute of :class:`Task` naming each one's config class.
MODES = {"train": "train_config", "eval": "eval_config", "predict": "predict_config"}

_TASKS: dict[str, Task] = {}


@dataclass
class TrainingParts:
    """What the runner hands to :class:`~sightkit.engine.Trainer` for one training run.

    Attributes:
        model: the network to train (its ``forward`` takes the collated inputs).
        criterion: ``criterion(outputs, targets) -> {name: loss}``.
        train_set, val_set: datasets (``val_set`` None: no evaluation).
        collate: the DataLoader's ``collate_fn``.
        evaluate: the engine's ``evaluate(model, loader, progress) -> metrics`` (None without ``val_set``).
        metadata: what the weights file needs to rebuild and use the model (str -> str; ``task`` included).
        loss_weights: weights of the criterion's losses (None: all 1).
    """

    model: nn.Module
    criterion: Callable[..., Any]
    train_set: Dataset
    val_set: Dataset | None
    collate: Callable[[list[Any]], Any]
    evaluate: Callable[..., dict[str, float]] | None
    metadata: dict[str, str]
    loss_weights: Mapping[str, float] | None = None


@dataclass
class EvalPlan:
    """What ``sightkit eval TASK`` runs: ``evaluate(model, DataLoader(dataset, collate_fn=collate))``,
    then ``report(out, console)`` writes the task's own files beside ``metrics.json``.

    Attributes:
        dataset, collate, evaluate: as for training.
        title: the heading of the metrics table.
        report: writes the task's extra files into ``out`` and returns their names.
        folder: the default output folder's name, next to the weights.
    """

    dataset: Dataset
    collate: Callable[[list[Any]], Any]
    evaluate: Callable[..., dict[str, float]]
    title: str
    report: Callable[[Path, Console], list[str]] = field(default=lambda out, console: [])
    folder: str = "eval"


class Task:
    """One task's declarations. Subclasses set the class attributes and implement the methods;
    one instance is registered with :func:`register_task`.

    Attributes:
        name: the task's name on the command line and in weights files' ``task`` metadata.
        summary: one line for the help.
        train_config, eval_config, predict_config: the typed configs of its modes (None: the
            mode does not exist for this task).
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    train_config: ClassVar[type | None] = None
    eval_config: ClassVar[type | None] = None
    predict_config: ClassVar[type | None] = None

    def training_parts(self, config: Any) -> TrainingParts:
        """Datasets, model, criterion, collate, evaluation and weights metadata of a training run."""
        raise NotImplementedError(f"task {self.name!r} cannot be trained")

    def load(self, weights: str | Path, metadata: dict[str, str], device: Any) -> Predictor:
        """The :class:`~sightkit.Predictor` of a weights file of this task (``metadata`` already read)."""
        raise NotImplementedError(f"task {self.name!r} has no predictor")

    def eval_plan(self, config: Any, predictor: Predictor) -> EvalPlan:
        """The dataset and evaluation of ``sightkit eval TASK`` for the loaded weights."""
        raise NotImplementedError(f"task {self.name!r} cannot be evaluated")

    def predict_options(self, config: Any) -> dict[str, Any]:
        """The predictor's keyword options that ``config`` (a ``predict_config``) sets, beyond the shared keys."""
        return {}

    def export_spec(self, predictor: Predictor, imgsz: int = 0) -> ExportSpec:
        """The module, example inputs and dynamic axes ``sightkit export onnx`` traces."""
        raise NotImplementedError(f"task {self.name!r} cannot be exported")

    def onnx_predictor(self, model: nn.Module, metadata: dict[str, str], device: Any) -> Predictor:
        """The :class:`~sightkit.Predictor` around an ONNX file of this task that ``sightkit export
        onnx`` wrote (``model``: its :class:`~sightkit.tasks.onnx_predictor.OnnxModel`; ``metadata``:
        its ``metadata_props``)."""
        raise ValueError(f"sightkit does not run exported {self.name} ONNX files; load the .safetensors weights")

    def load_weights(self, weights: str | Path, device: Any = None) -> Predictor:
        """:func:`sightkit.load` for weights of this task only (a clear error for any other file)."""
        from sightkit.tasks.runner import load_for

        return load_for(self, weights, device)

    @property
    def exportable(self) -> bool:
        return type(self).export_spec is not Task.export_spec


def register_task(task: Task) -> Task:
    """Register ``task`` under ``task.name`` (a name can be registered once; re-registering the
    same class is allowed, as happens when its module is reloaded)."""
    current = _TASKS.get(task.name)
    if current is not None and type(current).__qualname__ != type(task).__qualname__:
        raise ValueError(f"task name {task.name!r} is already registered by {type(current).__qualname__}")
    _TASKS[task.name] = task
    return task


def list_tasks() -> list[str]:
    """The names of the known tasks (built-in and registered), sorted; imports nothing."""
    return sorted({*BUILTIN, *_TASKS})


def get_task(name: str) -> Task:
    """The task registered as ``name``, importing its module the first time.

    Raises:
        ValueError: no task has that name (the closest is suggested).
    """
    if name not in _TASKS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list_tasks(), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known tasks: {', '.join(list_tasks())}"
        raise ValueError(f"unknown task {name!r}; {hint}")
    return _TASKS[name]


def metadata_task(metadata: Mapping[str, str]) -> str:
    """The task name a weights file's metadata gives (``''``: none)."""
    if metadata.get("task") == "face" and metadata.get("kind") == "detector":
        return "face_detect"  # face_detect weights written before the task wrote its own name
    return metadata.get("task", "")


def task_of_metadata(metadata: Mapping[str, str], weights: str | Path) -> Task:
    """The task a weights file's metadata names.

    Raises:
        ValueError: the metadata names no known task.
    """
    name = metadata_task(metadata)
    if name not in list_tasks():
        raise ValueError(
            f"weights={str(weights)!r} do not name a task sightkit knows (metadata task={name!r}; known: "
            f"{', '.join(list_tasks())}); use a file written by `sightkit train`"
        )
    return get_task(name)


def task_of_config(config: Any, mode: str) -> Task:
    """The task whose ``mode`` config (``train``, ``eval`` or ``predict``) ``config`` is.

    Raises:
        TypeError: ``config`` is no task's config for ``mode``.
    """
    for name in list_tasks():
        task = get_task(name)
        if type(config) is getattr(task, MODES[mode]):
            return task
    raise TypeError(
        f"config must be the {mode} config of a task ({', '.join(list_tasks())}), got {type(config).__name__}"
    )
