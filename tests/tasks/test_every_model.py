"""Every registered model, through the task contract (the timm idea: parametrised over
``list_models()``): it declares a task, builds, runs forward and backward, saves a weights
file that ``sightkit.load`` turns into its task's predictor, predicts on a numpy image with
the outputs the model gives for the same pixels; a few export to ONNX with onnxruntime equal
to PyTorch. The large variants (ResNet-50, IResNet-50/100, full MobileFaceNet) are marked slow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

import sightkit
from sightkit.data.faces import face_crop, normalise_face
from sightkit.models import embed_faces, list_models, model_task
from sightkit.tasks.export import ExportConfig, export_onnx
from sightkit.tasks.registry import get_task, list_tasks
from tests.tasks.tiny import tiny_weights

LARGE = ("_r50", "iresnet50", "iresnet100", "iresnet34")


def _marks(name: str) -> list[pytest.MarkDecorator]:
    large = any(part in name for part in LARGE) or name == "mobilefacenet"
    return [pytest.mark.slow] if large else []


MODELS = [pytest.param(name, marks=_marks(name), id=name) for name in list_models()]


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (72, 96, 3), dtype=np.uint8)


def test_every_model_declares_a_registered_task() -> None:
    tasks = {model_task(name) for name in list_models()}
    assert tasks == set(list_tasks()), tasks
    for task in list_tasks():
        assert get_task(task).name == task and list_models(task)


@pytest.mark.parametrize("name", MODELS)
def test_model_trains_saves_loads_and_predicts(name: str, tmp_path: Path) -> None:
    model, weights = tiny_weights(name, tmp_path / f"{name}.safetensors")
    predictor = sightkit.load(weights, "cpu")
    assert isinstance(predictor, sightkit.Predictor) and predictor.task == model_task(name)
    # The loaded weights are the saved ones, bit for bit.
    loaded = predictor.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key

    # Backward: a loss on every floating output reaches the parameters, finitely (two copies of
    # the predictor's own inputs: batch norm in training needs more than one value).
    model.train()
    inputs = predictor.preprocess([_frame(), _frame()], predictor.settings())
    net_inputs = [inputs["crops"]] if "crops" in inputs else [inputs["images"]]
    if predictor.task == "detect":
        net_inputs.append(inputs["mask"])
    loss = sum(t.float().sum() for t in _tensors(model(*net_inputs)) if t.is_floating_point() and t.requires_grad)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)

    # Predict on a numpy image: the Results hold this task's fields for the image's pixels.
    (result,) = predictor(_image(), conf=0.0)
    assert result.task == predictor.task and result.image.shape == (72, 96, 3)
    if predictor.task in ("detect", "face_detect", "pose"):
        assert result.boxes is not None and len(result.boxes) == len(result.scores)
        assert (result.boxes[:, 0::2] <= 96).all() and (result.boxes[:, 1::2] <= 72).all()
    if predictor.task == "pose":  # no boxes given: the whole image is one person
        np.testing.assert_allclose(result.boxes, [[0, 0, 96, 72]])
        assert result.keypoints.shape == (1, 17, 3)
    if predictor.task == "segment":
        assert result.masks.shape == (72, 96) and set(np.unique(result.masks)) <= {0, 1, 2}
    if predictor.task == "face":  # the whole image as one crop, resized: the embedder's output for it
        crop = normalise_face(face_crop(torch.from_numpy(_image()).permute(2, 0, 1), predictor.imgsz, None)[None])
        expected = embed_faces(predictor.model, crop)  # ``model`` ran in training: its batch statistics moved
        np.testing.assert_allclose(result.embeddings, expected.numpy(), atol=1e-5, equal_nan=True)
        if not _marks(name):  # the small embedders' random outputs are finite: unit length
            np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, rtol=1e-5)


def _frame() -> object:
    from sightkit.data.sources import Frame

    return Frame(image=_image(), path="a.png")


def _tensors(outputs: object) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for value in outputs.values() for t in _tensors(value)]
    if isinstance(outputs, list | tuple):
        return [t for value in outputs for t in _tensors(value)]
    return []


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["detr_r18_tiny", "rle_r18_tiny", "fcn_r18_tiny", "iresnet_tiny", "face_detector_tiny"]
)
def test_onnx_export_equals_pytorch(name: str, tmp_path: Path) -> None:
    _, weights = tiny_weights(name, tmp_path / f"{name}.safetensors")
    console = Console(file=io.StringIO())
    out = export_onnx(ExportConfig(weights=str(weights), out=str(tmp_path / "m.onnx")), console)
    assert out.is_file()
    difference = float(console.file.getvalue().split("max |difference|")[1].split()[0])
    assert difference < 1e-4
