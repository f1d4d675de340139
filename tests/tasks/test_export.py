"""``sightkit export`` and exported files as predictors: the deployed detector gives the PyTorch
predictor's Results, the ONNX file is one file with sightkit's metadata, the exporter's chatter
goes to a log file, bad outputs fail before any work. The real exports are slow (one NMS family,
one top-k family, one other task, pt2 and TorchScript); the predictor logic around them is
checked eagerly for all three detector families."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

import sightkit
from sightkit.engine.checkpoint import save_weights
from sightkit.models import create_model
from sightkit.models.deploy import DeployDetector, deploy_kind
from sightkit.tasks.export import (
    ExportConfig,
    export_onnx,
    export_pt2,
    export_spec,
    export_torchscript,
    exporter_log,
    output_path,
    read_exported_metadata,
)
from sightkit.tasks.onnx_predictor import OnnxDetectPredictor, load_onnx
from tests.tasks.tiny import tiny_model, tiny_weights

#: Three pictures: two of one size (a batch runs them together), one of another.
SIZES = ((72, 96), (72, 96), (50, 130))


def _images(seed: int = 0) -> list[np.ndarray]:
    generator = np.random.default_rng(seed)
    return [generator.integers(0, 256, (*size, 3), dtype=np.uint8) for size in SIZES]


def _detector_weights(name: str, path: Path) -> Path:
    """Tiny detector weights whose scores spread out (a random classifier gives near-ties that any
    rounding reorders) and, for VFNet, pass the candidate threshold."""
    torch.manual_seed(0)
    model, metadata = tiny_model(name)
    args = {"score_threshold": 0.02} if deploy_kind(model) == "nms" else {}
    model = create_model(name, num_classes=2, **args)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    save_weights(model, path, {**metadata, "model_args": json.dumps(args)})
    return path


def assert_same_results(got: list, expected: list, atol: float = 1e-3) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert len(e.scores) > 0  # something to compare
        np.testing.assert_array_equal(g.labels, e.labels)
        np.testing.assert_allclose(g.boxes, e.boxes, atol=atol, rtol=0)
        np.testing.assert_allclose(g.scores, e.scores, atol=1e-4, rtol=0)
        assert g.names == e.names and g.to_dict()["names"] == e.to_dict()["names"]


class EagerGraph(nn.Module):
    """:class:`DeployDetector` answering like an :class:`OnnxModel` of it (a dict of outputs)."""

    def __init__(self, deploy: DeployDetector) -> None:
        super().__init__()
        self.deploy = deploy

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(("boxes", "scores", "labels"), self.deploy(images), strict=True))


@pytest.mark.parametrize("name", ["detr_r18_tiny", "dino_r18_tiny", "vfnet_r18_tiny"])
def test_deployed_detector_gives_the_pytorch_predictors_results(name: str, tmp_path: Path) -> None:
    """The deployed graph's padding, mask, postprocess and rescaling, run eagerly, equal the
    PyTorch predictor's Results image by image, for images whose sides are not multiples of 32."""
    weights = _detector_weights(name, tmp_path / "w.safetensors")
    reference = sightkit.load(weights, "cpu")
    metadata = {**reference.metadata, "top_k": "100"}
    deployed = OnnxDetectPredictor(EagerGraph(DeployDetector.for_model(reference.model)), metadata, "cpu")
    expected = [reference(image, conf=0.0)[0] for image in _images()]
    assert_same_results(deployed(_images(), conf=0.0), expected, atol=1e-4)
    # Batched: the two same-size images run as one batch, the other alone; the same numbers.
    assert_same_results(deployed(_images(), conf=0.0, batch=3), expected, atol=1e-4)
    kept = deployed(_images()[0], conf=0.3, top_k=5)[0]
    assert len(kept) <= 5 and (kept.scores >= 0.3).all()


def test_deploy_kind_follows_the_declared_postprocess() -> None:
    kinds = {name: deploy_kind(create_model(name, num_classes=2)) for name in ("detr_r18_tiny", "dino_r18_tiny")}
    assert kinds == {"detr_r18_tiny": "softmax", "dino_r18_tiny": "sigmoid"}
    vfnet = create_model("vfnet_r18_tiny", num_classes=2, iou_threshold=0.5, pre_nms_top_k=300)
    deploy = DeployDetector.for_model(vfnet, top_k=7)
    assert (deploy.kind, deploy.top_k, deploy.iou_threshold, deploy.pre_nms_top_k) == ("nms", 7, 0.5, 300)
    with pytest.raises(ValueError, match="only IoU NMS deploys"):
        DeployDetector.for_model(create_model("vfnet_r18_tiny", num_classes=2, nms="diou"))
    with pytest.raises(ValueError, match="has no deployable form"):
        deploy_kind(nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["detr_r18_tiny", "rle_r18_tiny"])
def test_the_parity_check_runs_on_the_same_example_every_time(name: str, tmp_path: Path) -> None:
    """The example the exporters trace and the parity check compares on is drawn from seed 0,
    whatever the global random state: the reported difference is reproducible."""
    _, weights = tiny_weights(name, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    first = export_spec(weights)[0].inputs
    torch.manual_seed(2)
    second = export_spec(weights)[0].inputs
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]) and value.std() > 0.5


def test_padding_inside_the_graph_equals_the_predictors_padding() -> None:
    """DeployDetector pads 50 x 70 to 64 x 96 with the mask True exactly on the added rows and columns."""
    deploy = DeployDetector(nn.Identity(), "softmax")
    padded, mask = deploy._padded(torch.ones(2, 3, 50, 70))
    assert padded.shape == (2, 3, 64, 96) and mask.shape == (2, 64, 96)
    assert padded[:, :, :50, :70].eq(1).all() and padded[:, :, 50:].eq(0).all() and padded[..., 70:].eq(0).all()
    assert (~mask[:, :50, :70]).all() and mask[:, 50:].all() and mask[:, :, 70:].all()
    assert DeployDetector(nn.Identity(), "softmax")._padded(torch.ones(1, 3, 64, 32))[1].sum() == 0


def test_output_is_checked_before_any_work(tmp_path: Path) -> None:
    weights = str(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"out must be a \.onnx file"):
        output_path(ExportConfig(weights=weights, out=str(tmp_path / "m.pt")), "onnx")
    (tmp_path / "x.onnx").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        output_path(ExportConfig(weights=weights, out=str(tmp_path / "x.onnx")), "onnx")
    (tmp_path / "plain").write_text("")
    with pytest.raises(ValueError, match="cannot be written"):
        output_path(ExportConfig(weights=weights, out=str(tmp_path / "plain" / "deep" / "m.onnx")), "onnx")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root writes anywhere
        with pytest.raises(ValueError, match="cannot be written"):
            output_path(ExportConfig(weights=weights, out=str(locked / "m.onnx")), "onnx")
    assert output_path(ExportConfig(weights=weights), "pt2") == tmp_path / "missing.pt2"
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        export_onnx(ExportConfig(weights=weights), Console(file=io.StringIO()))


def test_exporter_log_takes_every_kind_of_output(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "export.log"
    with exporter_log(log):
        print("python print")
        os.write(1, b"native stdout\n")
        os.write(2, b"native stderr\n")
        warnings.warn("a warning", UserWarning, stacklevel=1)
        logging.getLogger("torch.onnx").warning("a log record")
    print("after")
    text = log.read_text()
    for line in ("python print", "native stdout", "native stderr", "a warning", "a log record"):
        assert line in text
    captured = capfd.readouterr()
    assert captured.out == "after\n" and captured.err == ""


def test_onnx_file_without_sightkit_metadata_is_refused(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ValueError, match="has no sightkit metadata"):
        sightkit.load(path)
    with pytest.raises(FileNotFoundError, match=r"nothing\.onnx"):
        load_onnx(tmp_path / "nothing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="not an ONNX file"):
        load_onnx(tmp_path / "junk.onnx")


# --------------------------------------------------------------------------- real exports (slow)


def _export(function, weights: Path, out: Path) -> tuple[Path, str]:
    console = Console(file=io.StringIO(), width=400)
    path = function(ExportConfig(weights=str(weights), out=str(out)), console)
    return path, console.file.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vfnet_r18_tiny", "detr_r18_tiny"])
def test_onnx_detector_is_one_file_with_metadata_and_the_pytorch_results(
    name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    weights = _detector_weights(name, tmp_path / "w.safetensors")
    capfd.readouterr()
    path, console = _export(export_onnx, weights, tmp_path / "out" / "m.onnx")
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx", "m.onnx.log"]  # no .onnx.data sidecar
    assert len(console.strip().splitlines()) == 2 and float(console.split("max |difference|")[1].split()[0]) < 1e-3
    # The exporter's chatter (onnxscript's warnings, printed by its loggers and print calls) is in the log only.
    printed, log = "".join(capfd.readouterr()), (path.parent / "m.onnx.log").read_text()
    chatter = {"vfnet_r18_tiny": "Attribute type is ambiguous", "detr_r18_tiny": "Skipping constant folding"}[name]
    assert chatter in log and chatter not in printed and "onnx" not in printed.lower()

    metadata = read_exported_metadata(path)
    reference = sightkit.load(weights, "cpu")
    for key in ("task", "model", "classes", "category_ids", "mean", "std", "imgsz", "max_size"):
        assert metadata[key] == reference.metadata[key], key
    assert metadata["sightkit_version"] == sightkit.__version__
    assert metadata["postprocess"] == deploy_kind(reference.model) and metadata["top_k"] == "100"

    import onnx

    graph = onnx.load(str(path)).graph
    assert [d.dim_param != "" for d in graph.input[0].type.tensor_type.shape.dim] == [True, False, True, True]
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels"]

    deployed = sightkit.load(path)
    assert isinstance(deployed, OnnxDetectPredictor) and deployed.names == reference.names
    expected = [reference(image, conf=0.0)[0] for image in _images()]
    assert_same_results(deployed(_images(), conf=0.0), expected)
    assert_same_results(deployed(_images(), conf=0.0, batch=3), expected)

    if name == "vfnet_r18_tiny":  # the CLI reads it too: predictions.jsonl equals the Results
        from PIL import Image

        Image.fromarray(_images()[2]).save(tmp_path / "a.png")
        result = subprocess.run(
            [sys.executable, "-m", "sightkit", "predict", "detect", f"weights={path}", f"source={tmp_path / 'a.png'}",
             f"out={tmp_path / 'pred'}", "conf=0.1"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        (line,) = (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()
        (mine,) = reference(tmp_path / "a.png", conf=0.1)
        got, want = json.loads(line), mine.to_dict()
        assert got["labels"] == want["labels"] and got["boxes"] == pytest.approx(want["boxes"], abs=0.011)


@pytest.mark.slow
def test_onnx_segmenter_gives_the_pytorch_masks(tmp_path: Path) -> None:
    _, weights = tiny_weights("fcn_r18_tiny", tmp_path / "seg.safetensors")
    path, _ = _export(export_onnx, weights, tmp_path / "seg.onnx")
    reference, deployed = sightkit.load(weights, "cpu"), sightkit.load(path)
    assert type(deployed) is type(reference) and read_exported_metadata(path)["task"] == "segment"
    for image in _images(1):
        (want,), (got,) = reference(image), deployed(image)
        assert (got.masks == want.masks).mean() > 0.999  # a pixel on a near-tie may flip
        assert got.masks.shape == image.shape[:2] and len(np.unique(want.masks)) > 1


@pytest.mark.slow
def test_onnx_pose_model_gives_the_pytorch_keypoints(tmp_path: Path) -> None:
    _, weights = tiny_weights("rle_r18_tiny", tmp_path / "pose.safetensors")
    path, _ = _export(export_onnx, weights, tmp_path / "pose.onnx")
    reference, deployed = sightkit.load(weights, "cpu"), sightkit.load(path)
    assert type(deployed) is type(reference)
    boxes = np.array([[5.0, 4.0, 60.0, 70.0, 0.9], [40.0, 10.0, 90.0, 66.0, 0.8]])
    for image in _images(2):
        (want,), (got,) = reference(image, boxes=boxes), deployed(image, boxes=boxes)
        assert len(want) == 2
        np.testing.assert_allclose(got.keypoints, want.keypoints, atol=1e-3, rtol=0)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_pt2_and_torchscript(tmp_path: Path) -> None:
    """pt2 (torch.export) keeps the dynamic batch and size; so does a traced DETR in TorchScript."""
    weights = _detector_weights("detr_r18_tiny", tmp_path / "w.safetensors")
    reference = sightkit.load(weights, "cpu")
    deploy = DeployDetector.for_model(reference.model).eval()
    images = torch.randn(3, 3, 70, 90)
    with torch.no_grad():
        expected = deploy(images)

    path, console = _export(export_pt2, weights, tmp_path / "m.pt2")
    assert float(console.split("max |difference|")[1].split()[0]) < 1e-5
    assert read_exported_metadata(path)["classes"] == reference.metadata["classes"]
    got = torch.export.load(str(path)).module()(images)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=0)

    path, console = _export(export_torchscript, weights, tmp_path / "m.torchscript")
    assert float(console.split("max |difference|")[1].split()[0]) < 1e-5
    assert read_exported_metadata(path)["model"] == "detr_r18_tiny"
    traced = torch.jit.load(str(path))
    with torch.no_grad():
        for g, e in zip(traced(images), expected, strict=True):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=0)
