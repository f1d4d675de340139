"""What every converter returns, and the strict check of a converted state dict against a model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn


class LayoutMismatchError(ValueError):
    """Converted weights do not fit the model: the message lists the missing, unexpected and
    mis-shaped keys."""


@dataclass
class Converted:
    """A foreign checkpoint in sightkit's layout.

    Attributes:
        family: the converter that read it (``"detr"``, ``"torchvision-resnet"``, ...).
        model: the registered model name it fits.
        model_args: builder overrides besides the task's own (``num_classes``, ``num_keypoints``, ...).
        state: parameter and buffer names of ``create_model(model, ...)`` -> tensors.
        metadata: the weights-file metadata of the task (str -> str; ``task``, ``model``,
            ``model_args`` included), the same as ``sightkit train`` writes.
        prefix: prepended to every key in a weights file of this task (face files keep the
            embedder under ``embedder.``).
    """

    family: str
    model: str
    model_args: dict[str, Any]
    state: dict[str, Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    prefix: str = ""

    def __post_init__(self) -> None:
        self.metadata = {**self.metadata, "model": self.model, "model_args": json.dumps(self.model_args)}


def _listed(label: str, items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")
    return f"{len(items)} {label} ({shown})"


def fit_state_dict(model: nn.Module, state: Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    """``state`` checked against ``model.state_dict()`` and ready for a strict ``load_state_dict``:
    BatchNorm's ``num_batches_tracked`` counters that the file lacks (frozen-BN checkpoints have
    none) keep the model's value, those the model lacks (frozen BN) are dropped, and tensors
    take the model's dtype.

    Raises:
        LayoutMismatchError: one message listing every missing, unexpected and mis-shaped key.
    """
    expected = model.state_dict()
    # BatchNorm's step counter is no weight: frozen BN has none, and files saved before it existed lack it.
    counter = "num_batches_tracked"
    out = {k: v for k, v in state.items() if not k.endswith(counter) or k in expected}
    out.update({k: v.clone() for k, v in expected.items() if k.endswith(counter) and k not in out})
    missing = [k for k in expected if k not in out]
    unexpected = [k for k in out if k not in expected]
    shapes = [
        f"{k}: model {tuple(expected[k].shape)} vs file {tuple(out[k].shape)}"
        for k in expected
        if k in out and out[k].shape != expected[k].shape
    ]
    problems = [
        _listed(label, items)
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", shapes))
        if items
    ]
    if problems:
        raise LayoutMismatchError(f"{what} does not fit {type(model).__name__}: {'; '.join(problems)}")
    return {k: v.to(expected[k].dtype) for k, v in out.items()}


def rename(state: Mapping[str, Tensor], prefix: str, new_prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix``, moved under ``new_prefix``."""
    return {new_prefix + k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
