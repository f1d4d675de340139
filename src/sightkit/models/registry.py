"""Model builders by name, for configs and the command line (the timm registry idea).

A builder is a function that returns an ``nn.Module`` and takes keyword arguments that
override its defaults::

    @register_model
    def detr_r18_tiny(**overrides) -> DETR: ...

    model = create_model("detr_r18_tiny", num_classes=3)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from sightkit._api import export

_MODELS: dict[str, Callable[..., nn.Module]] = {}

B = TypeVar("B", bound=Callable[..., nn.Module])


@export("models.register_model")
def register_model(builder: B) -> B:
    """Register ``builder`` under its function name; a name can be registered only once."""
    name = builder.__name__
    if name in _MODELS and _MODELS[name] is not builder:
        raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__module__}")
    _MODELS[name] = builder
    return builder


@export("models.list_models")
def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


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
