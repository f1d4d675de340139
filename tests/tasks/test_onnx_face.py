"""Exported face and face_detect ONNX files through ``sightkit.load``: onnxruntime's Results equal
the PyTorch weights' on synthetic face scenes (whole-image crops, flip test on and off, a face
detector's crops), and files the ONNX predictors cannot run are refused with the reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import sightkit
from sightkit.data.synthetic.faces import FaceIdentity, render_face_crop, render_face_scene
from sightkit.engine.checkpoint import save_weights
from sightkit.tasks.export import ExportConfig, ExportSpec, export_onnx
from sightkit.tasks.face import FaceTask, NormalisedEmbedder
from sightkit.tasks.face_detect import FaceDetectTask, OnnxFaceDetector
from sightkit.tasks.face_gallery import build_detector
from sightkit.tasks.onnx_predictor import OnnxFaceDetectPredictor, OnnxFacePredictor
from tests.tasks.tiny import tiny_model, tiny_weights

#: onnxruntime against PyTorch in float32, about ten times what was measured: pixels for boxes and
#: landmarks (8e-6 px), absolute for scores and unit embeddings (1e-6 and 3e-7).
PIXELS, UNIT = 1e-4, 1e-5


def _export(weights: Path, out: Path) -> Path:
    return export_onnx(ExportConfig(weights=str(weights), out=str(out), check=False), Console(file=io.StringIO()))


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    """Two face scenes of different sizes and aspect ratios (one batch, padded by the predictor)."""
    rng = np.random.default_rng(0)
    people = [FaceIdentity.sample(rng) for _ in range(3)]
    return [render_face_scene(people, rng, height, width, 3)[0] for height, width in ((90, 130), (120, 84))]


@pytest.fixture(scope="module")
def detector_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny face detector's weights and ONNX file. Its score head is drawn wide (std 0.5, not
    0.01) so that scores spread over (0, 1) and the NMS order does not hang on float rounding."""
    folder = tmp_path_factory.mktemp("face_detect")
    torch.manual_seed(0)
    model, metadata = tiny_model("face_detector_tiny")
    nn.init.normal_(model.cls_head.weight, std=0.5)
    weights = folder / "det.safetensors"
    save_weights(model, weights, metadata)
    return weights, _export(weights, folder / "det.onnx")


@pytest.fixture(scope="module")
def embedder_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("face")
    _, weights = tiny_weights("iresnet_tiny", folder / "face.safetensors")
    return weights, _export(weights, folder / "face.onnx")


def _assert_same(got: sightkit.Results, expected: sightkit.Results) -> None:
    assert len(got.scores) == len(expected.scores)
    np.testing.assert_allclose(got.scores, expected.scores, atol=UNIT, rtol=0)
    for field in ("boxes", "landmarks"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), atol=PIXELS, rtol=0)
    np.testing.assert_array_equal(got.labels, expected.labels)


def test_face_detect_onnx_equals_pytorch(detector_files: tuple[Path, Path], scenes: list[np.ndarray]) -> None:
    weights, onnx_file = detector_files
    onnx, torch_predictor = sightkit.load(onnx_file), sightkit.load(weights)
    assert isinstance(onnx, OnnxFaceDetectPredictor) and onnx.task == "face_detect"
    got, expected = onnx(scenes, conf=0.5, progress=False), torch_predictor(scenes, conf=0.5, progress=False)
    for g, e, scene in zip(got, expected, scenes, strict=True):
        assert len(e.scores) >= 3  # something to compare
        _assert_same(g, e)
        # In the original image's pixels, clipped to it (the scenes are smaller than the padded batch).
        height, width = scene.shape[:2]
        assert (g.boxes >= 0).all() and (g.boxes[:, 2] <= width).all() and (g.boxes[:, 3] <= height).all()
        np.testing.assert_allclose(g.head_pose, e.head_pose, atol=1e-4, rtol=0)


def test_face_detect_onnx_runs_any_size(detector_files: tuple[Path, Path]) -> None:
    """The graph's height and width are dynamic: an image whose resized batch is not the export's
    example size gives the PyTorch results (one image alone, a wide one)."""
    weights, onnx_file = detector_files
    image = np.random.default_rng(1).integers(0, 256, (50, 170, 3), dtype=np.uint8)
    (got,), (expected,) = sightkit.load(onnx_file)(image, conf=0.5), sightkit.load(weights)(image, conf=0.5)
    assert len(expected.scores)
    _assert_same(got, expected)


def test_face_onnx_equals_pytorch(embedder_files: tuple[Path, Path]) -> None:
    weights, onnx_file = embedder_files
    onnx, torch_predictor = sightkit.load(onnx_file), sightkit.load(weights)
    assert isinstance(onnx, OnnxFacePredictor) and onnx.model.num_features == torch_predictor.model.num_features
    rng = np.random.default_rng(2)
    crops = [render_face_crop(FaceIdentity.sample(rng), rng, 40)[0] for _ in range(3)]
    for flip in (False, True):
        got = np.concatenate([r.embeddings for r in onnx(crops, flip=flip)])
        expected = np.concatenate([r.embeddings for r in torch_predictor(crops, flip=flip)])
        assert got.shape == (3, onnx.model.num_features)
        np.testing.assert_allclose(got, expected, atol=UNIT, rtol=0)
    # The flip test is not the mean of the two unit embeddings: the raw features are added.
    unflipped = np.concatenate([r.embeddings for r in onnx(crops, flip=False)])
    assert np.abs(got - unflipped).max() > 1e-3


def test_face_onnx_with_face_detector(
    embedder_files: tuple[Path, Path], detector_files: tuple[Path, Path], scenes: list[np.ndarray]
) -> None:
    """ONNX embedder with the ONNX detector == PyTorch embedder with the PyTorch detector."""
    onnx = sightkit.load(embedder_files[1])
    torch_predictor = sightkit.load(embedder_files[0])
    got = onnx(scenes, detector=str(detector_files[1]), conf=0.5)
    expected = torch_predictor(scenes, detector=str(detector_files[0]), conf=0.5)
    for g, e in zip(got, expected, strict=True):
        assert len(e.scores) >= 3
        _assert_same(g, e)
        # Crops aligned on landmarks that differ by ~1e-5 px: the embeddings by more (1e-5 measured).
        np.testing.assert_allclose(g.embeddings, e.embeddings, atol=1e-4, rtol=0)
    # No face found: an empty [0, D] embedding, as PyTorch.
    (empty,) = onnx(scenes[:1], detector=str(detector_files[1]), conf=1.0)
    assert empty.embeddings.shape == (0, onnx.model.num_features)


def test_face_onnx_without_features_output(
    embedder_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file with the unit ``embedding`` alone: exact without flip; with flip the sum of the
    crop's and mirror's unit embeddings, normalised (what the docstring says)."""
    weights = embedder_files[0]

    class EmbeddingOnly(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor]:
            return (F.normalize(self.model(crops), dim=1),)

    def spec(self: FaceTask, predictor: sightkit.Predictor, imgsz: int = 0) -> ExportSpec:
        full = original(self, predictor, imgsz)
        assert isinstance(full.module, NormalisedEmbedder)
        full.module, full.output_names = EmbeddingOnly(predictor.model), ["embedding"]
        return full

    original = FaceTask.export_spec
    monkeypatch.setattr(FaceTask, "export_spec", spec)
    onnx = sightkit.load(_export(weights, tmp_path / "old.onnx"))
    model = sightkit.load(weights).model
    crops = torch.rand(2, 3, onnx.imgsz, onnx.imgsz) * 2 - 1
    with torch.no_grad():
        unit = F.normalize(model(crops), dim=1)
        unit_flipped = F.normalize(model(crops.flip(-1)), dim=1)
    for flip, expected in ((False, unit), (True, F.normalize(unit + unit_flipped, dim=1))):
        got = onnx.forward({"crops": crops, "flip": flip})
        torch.testing.assert_close(got, expected, atol=UNIT, rtol=0)


def test_fixed_size_face_detect_onnx_is_refused(
    detector_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files exported with a fixed side (before height and width were dynamic) are refused by name."""

    def fixed(self: FaceDetectTask, predictor: sightkit.Predictor, imgsz: int = 0) -> ExportSpec:
        return ExportSpec(
            module=OnnxFaceDetector(predictor.model), name=predictor.name,
            inputs={"images": torch.randn(2, 3, 64, 64)}, output_names=["logits", "boxes", "landmarks"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch", max=64)}},
        )  # fmt: skip

    monkeypatch.setattr(FaceDetectTask, "export_spec", fixed)
    out = _export(detector_files[0], tmp_path / "fixed.onnx")
    with pytest.raises(ValueError, match=r"fixed size 64 x 64.*sightkit export onnx"):
        sightkit.load(out)
    with pytest.raises(ValueError, match="is a face_detect model, not face"):
        sightkit.tasks.load_onnx(detector_files[1], task=sightkit.tasks.registry.get_task("face"))


def test_gallery_detector_takes_an_onnx_file(detector_files: tuple[Path, Path], scenes: list[np.ndarray]) -> None:
    """``face enroll|identify|verify detector=det.onnx`` detects as the weights do."""
    weights, onnx_file = detector_files
    images = torch.from_numpy(scenes[0]).permute(2, 0, 1)[None]
    (got,), (expected,) = build_detector(str(onnx_file)).detect(images), build_detector(str(weights)).detect(images)
    assert len(expected["scores"]) >= 3
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=PIXELS, rtol=0)
