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

Predictors also run a model prepared once for bfloat16 (:func:`prepare_for_inference`):
autocast alone re-casts every weight to bfloat16 on every call, and oneDNN reorders
contiguous convolution weights and activations to its blocked channels-last layout on every
call as well.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn

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


def prepare_for_inference(model: nn.Module, precision: str) -> nn.Module:
    """The model to run under :func:`autocast_context` at ``precision``, prepared once.

    ``"fp32"``: ``model`` itself. ``"bf16"``: an inference copy (``model`` is left as it is) with
    the weights of its convolutions in channels-last memory order, so that their activations,
    and the pooling and normalisation between them, stay channels-last as oneDNN's and cuDNN's
    bfloat16 kernels want them (on ``dino_r18_tiny`` the stem's max pooling alone took 5x longer
    on contiguous bfloat16 activations), and the weights of its convolutions and linear layers
    cast to bfloat16, which autocast would otherwise do again on every call. Biases, norms and
    embeddings stay float32, as autocast leaves them. On the CPU, :class:`torch.nn.MultiheadAttention`
    layers are computed in float32 (:class:`_Float32MultiheadAttention` says why). Apart from
    those, the copy computes what autocast computes on ``model``, up to the summation order of
    the channels-last convolutions.

    Args:
        model: a network in eval mode.
        precision: ``"fp32"`` or ``"bf16"``.

    Returns:
        ``model`` (at ``"fp32"``, or when it holds no convolution or linear layer) or its prepared
        copy, to be called under ``autocast_context(precision, device)`` only.

    Raises:
        ValueError: an unknown ``precision``.
    """
    check_precision(precision)
    layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    # A model without such layers (e.g. onnxruntime behind a Module) has nothing to prepare.
    if precision == "fp32" or not any(isinstance(module, layers) for module in model.modules()):
        return model
    prepared = copy.deepcopy(model).to(memory_format=torch.channels_last)
    # The float32 attention answers two CPU kernels' weaknesses; a GPU keeps autocast's bfloat16.
    on_cpu = all(parameter.device.type == "cpu" for parameter in prepared.parameters())
    attention = [m for m in prepared.modules() if isinstance(m, nn.MultiheadAttention)] if on_cpu else []
    in_attention = {id(layer) for module in attention for layer in module.modules()}
    for module in attention:
        module.__class__ = _Float32MultiheadAttention
    for module in prepared.modules():
        if isinstance(module, layers) and id(module) not in in_attention:
            module.weight.data = module.weight.data.to(torch.bfloat16)
    return prepared.eval()


class _Float32MultiheadAttention(nn.MultiheadAttention):
    """:class:`torch.nn.MultiheadAttention` computed in float32 inside a bfloat16 autocast region.

    On the CPU its bfloat16 path loses to float32 twice: the input projection of a
    ``batch_first`` attention gets a transposed ``[L, B, E]`` input, and for a weight that
    autocast cast (or any weight under ``inference_mode``) ``torch.matmul`` then copies the
    weight once per token into a batched product instead of folding the tokens into one matrix
    product; and the bfloat16 flash-attention kernel is slower than the float32 one at these
    sizes. Float32 attention made ``detr_r18_tiny``'s bfloat16 predict step ~20% faster.
    """

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        # ``query is key`` picks the attention's packed projections: keep those identities.
        cast = {id(x): x.float() for x in (query, key, value)}
        with torch.autocast(query.device.type, enabled=False):
            return super().forward(cast[id(query)], cast[id(key)], cast[id(value)], *args, **kwargs)
