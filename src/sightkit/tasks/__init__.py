"""Tasks: each declares its configs, training parts, predictor and export spec in the task
registry (:mod:`sightkit.tasks.registry`); one runner (:mod:`sightkit.tasks.runner`) trains,
evaluates and predicts for all of them.

The task modules import torch; they are imported on first access to a public name of this
namespace (``sightkit.tasks.DetectConfig``), not by ``import sightkit.tasks``, so that the
command line's help stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from sightkit._api import build_namespace

_MODULES = ("detect", "export", "face", "face_detect", "face_gallery", "onnx_predictor", "pose", "segment", "runner")


def __getattr__(name: str) -> Any:
    if name.startswith("__") and name != "__all__":
        raise AttributeError(name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: import that one only
        return importlib.import_module(f"{__name__}.{name}")
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")  # runs their @export declarations
    import sightkit.predictor  # noqa: F401  (sightkit.load and Predictor, used by every task)

    namespace = globals()
    namespace["__all__"] = build_namespace(__name__, namespace)
    if name not in namespace:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return namespace[name]
