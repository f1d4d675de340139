"""Model builders by name, for configs and the command line (the timm registry idea).

A builder is a function that returns an ``nn.Module`` and takes keyword arguments that
override its defaults; its registration names the task it serves (``detect``, ``pose``,
``segment``, ``face``, ``face_detect``), which the tasks check a ``model=`` setting against::

    @register_model(task="detect")
    def detr_r18_tiny(**overrides) -> DETR: ...

    model = create_model("detr_r18_tiny", num_classes=3)
    list_models(task="detect")  # [..., "detr_r18_tiny", ...]
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar, overload

from torch import nn

from sightkit._api import export

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}

B = TypeVar("B", bound=Callable[..., nn.Module])


@overload
def register_model(builder: B, *, task: str = "") -> B: ...
@overload
def register_model(builder: None = None, *, task: str = "") -> Callable[[B], B]: ...


@export("models.register_model")
def register_model(builder: B | None = None, *, task: str = "") -> B | Callable[[B], B]:
    """Register ``builder`` under its function name, as a model of ``task`` (``''``: none);
    used bare (``@register_model``) or with the task (``@register_model(task="detect")``).
    A name can be registered only once."""
    if builder is None:
        return lambda function: register_model(function, task=task)
    name = builder.__name__
    if name in _MODELS and _MODELS[name] is not builder:
        raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__module__}")
    _MODELS[name] = builder
    _TASKS[name] = task
    return builder


@export("models.list_models")
def list_models(task: str | None = None) -> list[str]:
    """The registered model names, sorted; only ``task``'s models when it is given."""
    return sorted(name for name in _MODELS if task is None or _TASKS[name] == task)


@export("models.model_task")
def model_task(name: str) -> str:
    """The task the model registered as ``name`` serves (``''``: none declared).

    Raises:
        ValueError: no model has that name.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model name {name!r}; available: {', '.join(list_models())}")
    return _TASKS[name]


@export("models.create_model")
def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``; ``kwargs`` override the builder's defaults.

    Raises:
        ValueError: no model has that name (the closest names are suggested).
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"available: {', '.join(list_models())}"
        raise ValueError(f"unknown model name {name!r}; {hint}")
    return _MODELS[name](**kwargs)
