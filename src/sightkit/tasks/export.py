"""``sightkit export onnx weights=...``: export any task's trained model to ONNX.

The weights file's metadata names its task; that task's module gives an :class:`ExportSpec`
(the module to trace, example inputs, output names, dynamic axes) through its
``export_spec(weights, imgsz)`` function. The export uses torch's dynamo exporter, and
onnxruntime's outputs are compared with PyTorch's on the example inputs.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn

from sightkit._api import export

#: Tasks whose module (``sightkit.tasks.<task>``) has an ``export_spec`` function.
EXPORTABLE_TASKS = ("detect", "pose", "face", "segment")


@export("tasks.ExportConfig")
@dataclass
class ExportConfig:
    """Settings of ``sightkit export onnx``."""

    weights: str = field(default="", metadata={"help": "a .safetensors file written by sightkit train"})
    out: str = field(default="", metadata={"help": "the .onnx file ('' : next to weights)"})
    opset: int = field(default=18, metadata={"help": "ONNX opset version (>= 18 with the dynamo exporter)"})
    imgsz: int = field(default=0, metadata={"help": "height and width of the example input (0: the training size)"})
    check: bool = field(default=True, metadata={"help": "compare onnxruntime's outputs with PyTorch's"})


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


def task_of(weights: str | Path) -> str:
    """The task named in a weights file's metadata (a clear error for files without one)."""
    from sightkit.tasks.common import read_metadata

    task = read_metadata(weights).get("task")
    if task not in EXPORTABLE_TASKS:
        raise ValueError(
            f"weights={str(weights)!r} do not name a task sightkit can export (metadata task={task!r}; "
            f"known: {', '.join(EXPORTABLE_TASKS)}); use a file written by `sightkit train`"
        )
    return task


@export("tasks.export_onnx")
def export_onnx(config: ExportConfig, console: Console | None = None) -> Path:
    """Export the model of ``config.weights`` to ONNX and, with ``check``, report the largest
    difference between onnxruntime's and PyTorch's outputs."""
    console = console or Console()
    if config.opset < 18:
        raise ValueError(f"opset must be >= 18 for torch's dynamo ONNX exporter, got {config.opset}")
    task = task_of(config.weights)
    spec: ExportSpec = importlib.import_module(f"sightkit.tasks.{task}").export_spec(config.weights, config.imgsz)
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
    console.print(f"exported {spec.name} ({task}) to [bold]{out}[/] in {time.perf_counter() - start:.1f} s")
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
