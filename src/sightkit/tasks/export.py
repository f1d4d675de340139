"""``sightkit export onnx|torchscript|pt2 weights=...``: export any task's trained model.

The weights file's metadata names its task; :func:`sightkit.load` rebuilds the model and the
task (from the registry) gives an :class:`ExportSpec` (the module to trace, example inputs,
output names, dynamic axes, extra metadata) through ``Task.export_spec(predictor, imgsz)``.
Detectors export with their postprocess inside (:class:`~sightkit.models.DeployDetector`):
the graph takes images of any batch and size and returns final boxes, scores and labels.

- ``onnx``: torch's dynamo exporter; one self-contained ``.onnx`` file (weights inside; ONNX
  moves them to a ``.onnx.data`` file only above protobuf's 2 GB limit) whose
  ``metadata_props`` hold everything :func:`sightkit.load` needs to rebuild the predictor
  around it (task, model, class names and ids, mean/std, input size, sightkit version, the
  deployed postprocess). onnxruntime's outputs are compared with PyTorch's.
- ``pt2``: :func:`torch.export.export` saved with :func:`torch.export.save` (dynamic shapes as
  for ONNX), the same metadata in the archive's ``extra_files["sightkit.json"]``.
- ``torchscript``: :func:`torch.jit.trace`, metadata in ``_extra_files["sightkit.json"]``.
  Tracing records as constants the sizes that code computes outside tensor operations; a
  traced DETR still follows the batch and input size (tested), other models may be exact
  only at the traced size: prefer ``pt2``.

The exporters' own console output (progress lines, warnings, log records, whatever C++
writes to stdout and stderr) goes to ``<out>.log`` beside the output; the console gets one
line per step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from rich.console import Console
from rich.text import Text
from torch import Tensor, nn

from sightkit._api import export
from sightkit.config import setting
from sightkit.outputs import check_output

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".torchscript"}
#: The archive entry of the pt2 and TorchScript files that holds the metadata (JSON, str -> str).
METADATA_ENTRY = "sightkit.json"


@export("tasks.ExportConfig")
@dataclass
class ExportConfig:
    """Settings of ``sightkit export FORMAT``."""

    weights: str = setting("", "a .safetensors file written by sightkit train")
    out: str = setting("", "the exported file ('' : next to weights, with the format's suffix)")
    opset: int = setting(18, "ONNX opset version (>= 18 with the dynamo exporter)")
    imgsz: int = setting(0, "height and width of the example input (0: the training size)")
    check: bool = setting(True, "compare the exported model's outputs with PyTorch's")


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
        metadata: what the exported file carries beyond the weights file's metadata (str -> str),
            e.g. the deployed postprocess.
        translations: ``custom_translation_table`` of the ONNX exporter (custom operators).
    """

    module: nn.Module
    name: str
    inputs: dict[str, Tensor]
    output_names: list[str]
    dynamic_shapes: dict[str, Any] | None = None
    min_opset: int = 18
    metadata: dict[str, str] = field(default_factory=dict)
    translations: dict[Any, Callable[..., Any]] = field(default_factory=dict)


def export_spec(weights: str | Path, imgsz: int = 0) -> tuple[ExportSpec, dict[str, str]]:
    """The :class:`ExportSpec` of any task's weights file (its task's ``export_spec``) and the
    metadata the exported file carries (the weights file's, the task's additions, the format
    and the sightkit version).

    Raises:
        ValueError: the file names no task, or one that cannot be exported.
    """
    from sightkit import __version__
    from sightkit.predictor import load
    from sightkit.tasks.registry import get_task

    predictor = load(weights, "cpu")
    task = get_task(predictor.task)
    if not task.exportable:
        raise ValueError(f"weights={str(weights)!r} are {task.name} weights, which sightkit cannot export")
    spec = task.export_spec(predictor, imgsz)
    spec.module.eval()
    metadata = {
        **predictor.metadata,
        "task": task.name,
        "sightkit_version": __version__,
        "inputs": json.dumps({name: list(value.shape[1:]) for name, value in spec.inputs.items()}),
        "outputs": json.dumps(spec.output_names),
        **spec.metadata,
    }
    return spec, metadata


def output_path(config: ExportConfig, fmt: str) -> Path:
    """Where ``config`` exports to, checked before any work: the path is not a folder and can be
    written (:func:`sightkit.outputs.check_output`).

    Raises:
        ValueError: ``out`` has another suffix than the format's, is a folder, or cannot be written.
    """
    suffix = FORMATS[fmt]
    if not config.weights:
        raise ValueError("weights= is required: a .safetensors file written by `sightkit train`")
    out = Path(config.out) if config.out else Path(config.weights).with_suffix(suffix)
    if out.suffix != suffix:
        raise ValueError(f"out must be a {suffix} file for format {fmt}, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder; give the file to write, e.g. {out / ('model' + suffix)}")
    return check_output(out, "out", "file")


@contextlib.contextmanager
def exporter_log(path: Path) -> Iterator[TextIO]:
    """Send everything printed while the block runs to ``path``: Python's ``sys.stdout`` and
    ``sys.stderr``, what native code writes to file descriptors 1 and 2, warnings and log records.

    The exporters print progress lines, warnings ("Skipping constant folding") and C++ messages
    that a user of ``sightkit export`` does not need; the file keeps them for when something fails.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with open(path, "w", buffering=1) as log, warnings.catch_warnings():
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: log.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )
        root.handlers = [logging.StreamHandler(log)]
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log
        finally:
            log.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            root.handlers, root.level = handlers, level


def _run_quietly(log_path: Path, step: Callable[[], Any]) -> Any:
    """``step()`` under :func:`exporter_log`; a failure says where the log is."""
    try:
        with exporter_log(log_path):
            return step()
    except Exception as error:
        error.add_note(f"the exporter's output is in {log_path}")
        raise


def _prepare(config: ExportConfig, fmt: str, console: Console | None) -> tuple[Console, Path, Path]:
    console = console or Console()
    if fmt == "onnx" and config.opset < 18:
        raise ValueError(f"opset must be >= 18 for torch's dynamo ONNX exporter, got {config.opset}")
    out = output_path(config, fmt)
    if not Path(config.weights).is_file():
        raise FileNotFoundError(f"weights={config.weights!r} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    return console, out, out.with_name(out.name + ".log")


def _report(console: Console, spec: ExportSpec, out: Path, log: Path, start: float, detail: str = "") -> None:
    size = out.stat().st_size / 2**20
    seconds = time.perf_counter() - start
    after = f" ({size:.1f} MB{detail}) in {seconds:.1f} s; exporter log: {log}"
    line = Text.assemble(f"exported {spec.name} to ", (str(out), "bold"), after)
    console.print(line, soft_wrap=True)


def example_input(*shape: int) -> Tensor:
    """A standard-normal example input of ``shape`` for an :class:`ExportSpec`, the same on every
    call (seed 0): the exporters trace it and the parity check compares outputs on it, so the
    reported difference is reproducible (on random draws, a near-tie in a detector's top-k
    ranked its outputs differently in onnxruntime now and then, a 32-pixel "difference")."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


@export("tasks.export_onnx")
def export_onnx(config: ExportConfig, console: Console | None = None) -> Path:
    """Export the model of ``config.weights`` to one ONNX file with its metadata in
    ``metadata_props`` and, with ``check``, report the largest difference between onnxruntime's
    and PyTorch's outputs on the example inputs.

    Raises:
        ValueError: a bad setting, an output that cannot be written, weights that cannot be exported.
        FileNotFoundError: ``weights`` does not exist.
    """
    console, out, log = _prepare(config, "onnx", console)
    spec, metadata = export_spec(config.weights, config.imgsz)
    opset = max(config.opset, spec.min_opset)  # said in the report line
    start = time.perf_counter()

    def convert() -> None:
        # torch.export first (torch.onnx.export would turn Dim.DYNAMIC axes into named Dims, whose
        # solver rejects the detectors' padding arithmetic), then the ONNX translation.
        program = torch.onnx.export(
            _exported_program(spec),
            dynamo=True,
            opset_version=opset,
            input_names=list(spec.inputs),
            output_names=spec.output_names,
            custom_translation_table=spec.translations or None,
            verbose=False,
        )
        program.model.metadata_props.update(metadata)
        # external_data=None: weights inside the file, unless protobuf's 2 GB limit forces a sidecar.
        program.save(str(out), external_data=None)

    _run_quietly(log, convert)
    _report(console, spec, out, log, start, f", opset {opset}")
    if config.check:
        difference = onnx_parity(spec, out)
        console.print(f"onnxruntime vs PyTorch: max |difference| {difference:.2e}")
    return out


@export("tasks.export_pt2")
def export_pt2(config: ExportConfig, console: Console | None = None) -> Path:
    """Export the model of ``config.weights`` with :func:`torch.export.export` (dynamic shapes as
    for ONNX) to a ``.pt2`` archive (:func:`torch.export.save`; the metadata in its
    ``extra_files["sightkit.json"]``); ``torch.export.load(path).module()`` runs it (import
    sightkit first: detectors use its ``sightkit::multiclass_nms`` operator)."""
    console, out, log = _prepare(config, "pt2", console)
    spec, metadata = export_spec(config.weights, config.imgsz)
    start = time.perf_counter()

    def convert() -> torch.export.ExportedProgram:
        program = _exported_program(spec)
        torch.export.save(program, str(out), extra_files={METADATA_ENTRY: json.dumps(metadata)})
        return program

    program = _run_quietly(log, convert)
    _report(console, spec, out, log, start)
    if config.check:
        difference = _difference(program.module()(*spec.inputs.values()), spec)
        console.print(f"torch.export vs PyTorch: max |difference| {difference:.2e}")
    return out


@export("tasks.export_torchscript")
def export_torchscript(config: ExportConfig, console: Console | None = None) -> Path:
    """Export the model of ``config.weights`` with :func:`torch.jit.trace` to a ``.torchscript``
    file (metadata in ``_extra_files["sightkit.json"]``). Traced on the example inputs: sizes that
    code computes outside tensor operations become constants, so prefer ``pt2`` for other sizes."""
    console, out, log = _prepare(config, "torchscript", console)
    spec, metadata = export_spec(config.weights, config.imgsz)
    start = time.perf_counter()

    def convert() -> torch.jit.ScriptModule:
        traced = torch.jit.trace(spec.module, tuple(spec.inputs.values()), check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={METADATA_ENTRY: json.dumps(metadata)})
        return traced

    traced = _run_quietly(log, convert)
    _report(console, spec, out, log, start)
    if config.check:
        difference = _difference(traced(*spec.inputs.values()), spec)
        console.print(f"TorchScript vs PyTorch: max |difference| {difference:.2e}")
    return out


def _exported_program(spec: ExportSpec) -> torch.export.ExportedProgram:
    """``spec.module`` through :func:`torch.export.export` with the spec's dynamic shapes.

    Sizes are traced size-obliviously where that works: otherwise an intermediate size that is 1
    (or not) in the example, such as a 1 x 1 level of VFNet's pyramid, is specialised, and the
    graph is wrong for inputs where it is not (guards that onnxruntime does not check). Some
    models' size arithmetic cannot be traced that way (DETR's: an equality the oblivious rules
    cannot prove); they are traced as usual.
    """
    from torch.fx.experimental import _config as fx_config

    arguments, shapes = tuple(spec.inputs.values()), spec.dynamic_shapes
    with torch.no_grad():
        try:
            with fx_config.patch(backed_size_oblivious=True):
                return torch.export.export(spec.module, arguments, dynamic_shapes=shapes)
        except Exception as error:  # whatever the tracer raised, the usual trace is the fallback
            print(f"size-oblivious tracing failed ({error}); tracing with specialised sizes", file=sys.stderr)
            return torch.export.export(spec.module, arguments, dynamic_shapes=shapes)


def _difference(got: Any, spec: ExportSpec) -> float:
    """Largest absolute difference between ``got`` and the module's outputs on the example inputs."""
    with torch.no_grad():
        expected = spec.module(*spec.inputs.values())
    got = got if isinstance(got, tuple | list) else (got,)
    expected = expected if isinstance(expected, tuple | list) else (expected,)
    differences = [(torch.as_tensor(g).double() - e.double()).abs() for g, e in zip(got, expected, strict=True)]
    return max((float(d.max()) for d in differences if d.numel()), default=0.0)


def onnx_parity(spec: ExportSpec, path: Path) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs on the example inputs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are about graph optimisation
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {name: value.numpy() for name, value in spec.inputs.items()})
    return _difference(tuple(torch.from_numpy(g) for g in got), spec)


def read_exported_metadata(path: str | Path) -> dict[str, str]:
    """The sightkit metadata of an exported ``.onnx``, ``.pt2`` or ``.torchscript`` file (``{}`` if none).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: its suffix is none of the export formats'.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights={str(path)!r} does not exist")
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {entry.key: entry.value for entry in model.metadata_props}
    if path.suffix == ".pt2":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            entry = next((n for n in archive.namelist() if n.endswith(f"extra/{METADATA_ENTRY}")), None)
            return json.loads(archive.read(entry)) if entry else {}
    if path.suffix == ".torchscript":
        extra = {METADATA_ENTRY: ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return json.loads(extra[METADATA_ENTRY] or "{}")
    raise ValueError(f"weights must be one of {', '.join(FORMATS.values())} files, got {str(path)!r}")


#: ``sightkit export FORMAT``: the exporter of each format.
EXPORTERS: dict[str, Callable[[ExportConfig, Console | None], Path]] = {
    "onnx": export_onnx,
    "pt2": export_pt2,
    "torchscript": export_torchscript,
}
