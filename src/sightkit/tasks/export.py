"""``sightkit export onnx weights=...``: export any task's trained model to ONNX.

The weights file's metadata names its task; :func:`sightkit.load` rebuilds the model and the
task (from the registry) gives an :class:`ExportSpec` (the module to trace, example inputs,
output names, dynamic axes) through ``Task.export_spec(predictor, imgsz)``. The export uses
torch's dynamo exporter, and onnxruntime's outputs are compared with PyTorch's on the
example inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn

from sightkit._api import export
from sightkit.config import setting


@export("tasks.ExportConfig")
@dataclass
class ExportConfig:
    """Settings of ``sightkit export onnx``."""

    weights: str = setting("", "a .safetensors file written by sightkit train")
    out: str = setting("", "the .onnx file ('' : next to weights)")
    opset: int = setting(18, "ONNX opset version (>= 18 with the dynamo exporter)")
    imgsz: int = setting(0, "height and width of the example input (0: the training size)")
    check: bool = setting(True, "compare onnxruntime's outputs with PyTorch's")


@dataclass
class ExportSpec:
    """What a task hands to the exporter.

    Attributes:
        module: the model in eval mode, returning a tuple of tensors.
        name: the model's registry name (for messages).
        inputs: example inputs by name, in the order of ``module.forward``'s arguments.
        output_names: one name per returned tensor.
        dynamic_shapes: per input name, ``{axis: torch.export.Dim}`` for the axes that vary.
        min_opset: the lowest ONNX opset that has the module's operators (19 for ``DeformConv``);
            a lower ``opset=`` setting is raised to it.
    """

    module: nn.Module
    name: str
    inputs: dict[str, Tensor]
    output_names: list[str]
    dynamic_shapes: dict[str, Any] | None = None
    min_opset: int = 18


def export_spec(weights: str | Path, imgsz: int = 0) -> ExportSpec:
    """The :class:`ExportSpec` of any task's weights file (its task's ``export_spec``).

    Raises:
        ValueError: the file names no task, or one that cannot be exported.
    """
    from sightkit.predictor import load
    from sightkit.tasks.registry import get_task

    predictor = load(weights, "cpu")
    task = get_task(predictor.task)
    if not task.exportable:
        raise ValueError(f"weights={str(weights)!r} are {task.name} weights, which sightkit cannot export to ONNX")
    return task.export_spec(predictor, imgsz)


@export("tasks.export_onnx")
def export_onnx(config: ExportConfig, console: Console | None = None) -> Path:
    """Export the model of ``config.weights`` to ONNX and, with ``check``, report the largest
    difference between onnxruntime's and PyTorch's outputs."""
    console = console or Console()
    if config.opset < 18:
        raise ValueError(f"opset must be >= 18 for torch's dynamo ONNX exporter, got {config.opset}")
    spec = export_spec(config.weights, config.imgsz)
    out = Path(config.out) if config.out else Path(config.weights).with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    opset = max(config.opset, spec.min_opset)
    if opset != config.opset:
        console.print(f"opset {config.opset} lacks operators of {spec.name}; exporting with opset {opset}")
    spec.module.eval()
    start = time.perf_counter()
    torch.onnx.export(
        spec.module,
        tuple(spec.inputs.values()),
        str(out),
        dynamo=True,
        opset_version=opset,
        input_names=list(spec.inputs),
        output_names=spec.output_names,
        dynamic_shapes=spec.dynamic_shapes,
    )
    console.print(f"exported {spec.name} to [bold]{out}[/] in {time.perf_counter() - start:.1f} s")
    if config.check:
        difference = onnx_parity(spec, out)
        console.print(f"onnxruntime vs PyTorch: max |difference| {difference:.2e}")
    return out


def onnx_parity(spec: ExportSpec, path: Path) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs on the example inputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: value.numpy() for name, value in spec.inputs.items()})
    with torch.no_grad():
        expected = spec.module(*spec.inputs.values())
    return max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected, strict=True))
