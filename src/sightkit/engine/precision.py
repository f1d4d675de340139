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
call as well (the copy keeps its convolution weights reordered).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops import FrozenBatchNorm2d

PRECISIONS = ("fp32", "bf16")
# the layers whose weights the bfloat16 copy casts once
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


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
    (and their biases), and those of :class:`torch.nn.MultiheadAttention` layers, cast to
    bfloat16, which autocast would otherwise do again on every call. Norms and embeddings stay
    float32, as autocast leaves them. Before the cast, each BatchNorm that directly follows a
    convolution is folded into it (:func:`_fold_batch_norms`). The output heads a model names
    in ``float32_heads`` (DETR's and DINO's class and box heads) stay float32 and run outside
    autocast (:class:`_Float32Head`). On the CPU, group norms take
    contiguous inputs (:class:`_ContiguousGroupNorm`), and 2-d convolutions keep their weights
    in oneDNN's blocked layout for the last input shape (:class:`_PackedConv2d`). Apart from
    those, the copy computes what autocast computes on ``model``, up to the summation order of
    the channels-last convolutions and the rounding of the folded weights to bfloat16.

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
    # A model without such layers (e.g. onnxruntime behind a Module) has nothing to prepare.
    if precision == "fp32" or not any(isinstance(module, _LAYERS) for module in model.modules()):
        return model
    # Made outside inference mode, the copy's weights are ordinary tensors that require grad, which
    # is what lets ``torch.matmul`` fold a ``[L, B, E]`` input into one matrix product: for an
    # inference tensor it copies the weight once per token into a batched product instead (on
    # ``dino_r18_tiny`` that ``bmm`` took 11 ms a batch of 8).
    with torch.inference_mode(False):
        return _bfloat16_copy(model)


def _bfloat16_copy(model: nn.Module) -> nn.Module:
    """:func:`prepare_for_inference`'s copy of ``model`` for ``"bf16"``."""
    prepared = copy.deepcopy(model).eval()
    _fold_batch_norms(prepared)
    kept = _keep_heads_in_float32(prepared)
    prepared = prepared.to(memory_format=torch.channels_last)
    # the contiguous group norms and packed convolutions answer CPU kernels' weaknesses
    on_cpu = all(parameter.device.type == "cpu" for parameter in prepared.parameters())
    pack = on_cpu and _packed_convolutions_work()
    for module in prepared.modules():
        if id(module) in kept:
            continue
        if isinstance(module, _LAYERS):
            # autocast casts the bias too, on every call: ~100 small casts a DETR forward
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(torch.bfloat16)
            if (
                pack
                and type(module) is nn.Conv2d
                and module.padding_mode == "zeros"
                and isinstance(module.padding, tuple)
            ):
                module.__class__ = _PackedConv2d
        elif isinstance(module, nn.MultiheadAttention):
            # its packed input projection is a bare parameter, not a Linear layer
            module.to(torch.bfloat16)
        elif on_cpu and type(module) is nn.GroupNorm:
            module.__class__ = _ContiguousGroupNorm
    return prepared


def _fold_batch_norms(model: nn.Module) -> None:
    """Fold, in place, each 2-d BatchNorm that directly follows a convolution into that
    convolution's weight and bias, and replace it by an identity.

    In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` is one convolution
    with scaled weights and a shifted bias: one pass over the activations fewer (on
    ``dino_r18_tiny``'s ResNet-18 the 15 BatchNorms took 2.4 ms of a 75 ms bfloat16 batch). Only
    where the order is known from the structure: neighbours in an :class:`~torch.nn.Sequential`
    (a backbone's stem, a downsampling shortcut) and ``convK`` -> ``bnK`` in torchvision's ResNet
    and its blocks. A BatchNorm without running statistics (``track_running_stats=False``) normalises
    with the batch's own even in eval mode and is left alone.
    """
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            names = [name for name, _ in module.named_children()]
            pairs = list(itertools.pairwise(names))
        elif isinstance(module, BasicBlock | Bottleneck | ResNet):
            pairs = [(f"conv{k}", f"bn{k}") for k in (1, 2, 3) if hasattr(module, f"bn{k}")]
        else:
            continue
        for conv_name, norm_name in pairs:
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            if not isinstance(conv, nn.Conv2d) or not isinstance(norm, nn.BatchNorm2d | FrozenBatchNorm2d):
                continue
            if norm.running_mean is None or norm.running_var is None:
                continue
            conv.weight, conv.bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
            )
            setattr(module, norm_name, nn.Identity())


def _keep_heads_in_float32(model: nn.Module) -> set[int]:
    """Wrap, in place, the submodules ``model.float32_heads`` names (a ``ModuleList`` head by
    head) in :class:`_Float32Head`; return the ids of every module inside them, which the
    bfloat16 copy leaves as they are."""
    kept: set[int] = set()
    for name in getattr(model, "float32_heads", ()):
        head = model.get_submodule(name)
        if isinstance(head, nn.ModuleList):
            for index, member in enumerate(head):
                head[index] = _Float32Head(member)
        else:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, _Float32Head(head))
        kept.update(id(module) for module in model.get_submodule(name).modules())
    return kept


class _Float32Head(nn.Module):
    """An output head of the bfloat16 copy run in float32, autocast off: the boxes and class
    scores are the results, and a bfloat16 layer there rounds them to 8 bits of mantissa (a box
    coordinate in logit space to 1/64 near 2, about 1.5 px on an 800 px image, per refinement).
    The heads are a sliver of the compute; the rest of the network stays bfloat16."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with torch.autocast(input.device.type, enabled=False):
            return self.head(input.float())


class _ContiguousGroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` on a contiguous copy of its input: PyTorch's CPU kernel is ~9x
    slower on channels-last activations (1.1 ms against 0.12 ms for a ``[8, 128, 16, 16]``
    bfloat16 batch, 2 threads), and the bfloat16 copy's activations are channels-last."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input.contiguous())


class _PackedConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` (bfloat16 weight, CPU) that keeps its weight reordered into
    oneDNN's blocked layout for the last input shape: ``F.conv2d`` reorders the plain weight on
    every call (0.40 ms of a 1.6 ms 256-channel 3 x 3 convolution on an ``[8, 256, 8, 8]`` batch).
    The layout oneDNN picks depends on the input's shape, so a new shape packs again (what every
    ``F.conv2d`` call does anyway). The reorder and the convolution are oneDNN's own
    (``torch.ops.mkldnn``), those ``torch.compile`` emits for CPU convolutions;
    :func:`_packed_convolutions_work` checks them once per process, and without them the copy
    keeps ordinary convolutions. Measured on torchvision's ResNet-50 at bfloat16, 2 threads:
    4-14% faster, outputs identical."""

    _packed: tuple[tuple[int, ...], torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # oneDNN's packed tensors have no storage to copy or save: a copy packs again on its first call
        return {key: value for key, value in super().__getstate__().items() if key != "_packed"}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # Autocast does not cover oneDNN's op: the input is cast here, and kept channels-last as
        # the rest of the copy's activations (a contiguous input would give a contiguous output).
        input = input.to(torch.bfloat16, memory_format=torch.channels_last)
        shape = tuple(input.shape)
        if self._packed is None or self._packed[0] != shape:
            weight = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.detach(), self.padding, self.stride, self.dilation, self.groups, shape
            )
            self._packed = (shape, weight)
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._convolution_pointwise(
            input, self._packed[1], bias, self.padding, self.stride, self.dilation, self.groups, "none", [], ""
        )


@functools.cache
def _packed_convolutions_work() -> bool:
    """Whether this PyTorch build has oneDNN's packed bfloat16 convolution and it computes what
    ``F.conv2d`` does (checked once, on one small convolution)."""
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1).to(torch.bfloat16)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
        images = torch.randn(2, 4, 9, 7, generator=generator).to(torch.bfloat16)
        expected = conv(images).float()
        conv.__class__ = _PackedConv2d
        try:
            got = conv(images).float()
        except (RuntimeError, AttributeError, NotImplementedError):
            return False
    return torch.allclose(got, expected, rtol=1e-2, atol=1e-2)
