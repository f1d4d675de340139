"""sightkit: find and recognise things in images.

``sightkit.load(weights) -> Predictor``; ``predictor(source) -> [Results]`` (see
:mod:`sightkit.predictor`). Namespaces (each filled from the ``@export`` registry in
:mod:`sightkit._api`): ``sightkit.ops``, ``sightkit.losses``, ``sightkit.nn``,
``sightkit.models``, ``sightkit.data``, ``sightkit.eval``, ``sightkit.engine``, ``sightkit.tasks``.

``import sightkit`` imports nothing heavy: the names below load their module (and torch) on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Top-level names and the module that defines each.
_LAZY = {"load": "sightkit.predictor", "Predictor": "sightkit.predictor", "Results": "sightkit.results"}

__all__ = ["Predictor", "Results", "load"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sightkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
