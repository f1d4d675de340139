"""Inference precision: float32, or bfloat16 through autocast.

``precision="bf16"`` runs the model under ``torch.autocast(device_type, torch.bfloat16)``:
matrix products and convolutions take bfloat16 inputs (8 bits of mantissa, float32's range)
and accumulate in float32, while the ops autocast keeps in float32 (softmax, norms, losses)
stay there. On CPUs with bfloat16 instructions (AVX512-BF16, AMX) and on CUDA GPUs from
Ampere on, this is several times the float32 matmul rate; elsewhere it is emulated and may be
slower. Outputs come back partly in bfloat16, so postprocessing casts to float32 first (the
DETR postprocessors do). ``benchmarks/bf16_predict.py`` measures the speed and the accuracy
cost (COCO AP and the largest box difference against float32).

Predictors, evaluation and the server wrap their model call::

    with autocast_context(precision, device):
        outputs = model(images, mask)
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS`` (``"fp32"``, ``"bf16"``), else ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """The context a model call runs in at ``precision`` on ``device``.

    Args:
        precision: ``"fp32"`` (no autocast: a null context) or ``"bf16"`` (autocast to
            bfloat16 on the device's type, ``"cpu"`` or ``"cuda"``).
        device: where the model runs, e.g. ``"cpu"``, ``"cuda:0"`` or a ``torch.device``.

    Returns:
        A context manager; inference inside it computes matmuls and convolutions in ``precision``.

    Raises:
        ValueError: an unknown ``precision``, or ``"bf16"`` on a device type autocast does not cover.
    """
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"precision 'bf16' needs device 'cpu' or 'cuda', got {str(device)!r}")
    return torch.autocast(device_type, dtype=torch.bfloat16)
