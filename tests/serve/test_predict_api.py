"""/v1/predict for every task: the answer equals ``sightkit.load(weights)(image).to_dict()`` in
Python for the same pixels (detect, segment with the mask as COCO RLE and as PNG, pose with
keypoints, face_detect with landmarks, face with embeddings)."""

import base64
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sightkit
from sightkit.serve.app import create_app
from sightkit.serve.config import ServeConfig
from tests.serve.clients import local_client
from tests.tasks.tiny import tiny_weights

PNG = Callable[[int, int, int], bytes]
MODELS = {
    "detect": "detr_r18_tiny",
    "segment": "unet_r18_tiny",
    "pose": "rle_r18_tiny",
    "face_detect": "face_detector_tiny",
    "face": "iresnet_tiny",
}


def served(answer: dict) -> dict:
    """A /v1/predict result without what only the server adds (the upload's name and size, the
    segmenter's class shares)."""
    return {k: v for k, v in answer.items() if k not in ("image", "width", "height", "classes")}


def python(result: sightkit.Results) -> dict:
    return {k: v for k, v in result.to_dict().items() if k not in ("path", "frame")}


@pytest.mark.parametrize("task", list(MODELS))
def test_answers_equal_the_python_predictor(task: str, png: PNG, tmp_path: Path) -> None:
    _, weights = tiny_weights(MODELS[task], tmp_path / f"{task}.safetensors", seed=3)
    images = {"a.png": png(48, 72, 1), "b.png": png(80, 56, 2)}
    predictor = sightkit.load(weights, "cpu")
    settings = ServeConfig(weights=str(weights), conf=0.0, gallery=str(tmp_path / "g.db"))
    with local_client(create_app(settings)) as client:
        answer = client.post("/v1/predict", files=[("images", (n, d, "image/png")) for n, d in images.items()])
        info = client.get("/v1/model").json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["task"], body["model"], info["task"], info["model"]) == (task, MODELS[task], task, MODELS[task])
    assert info["classes"] == predictor.names and sorted(predictor.options) == info["options"]
    for result, (name, data) in zip(body["results"], images.items(), strict=True):
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        (expected,) = predictor(pixels, conf=0.0, progress=False)
        assert (result["image"], result["height"], result["width"]) == (name, *pixels.shape[:2])
        assert served(result) == python(expected)
        assert set(served(result)) >= {"embeddings"} if task == "face" else True
    if task in ("detect", "face_detect", "pose"):
        assert all(len(r["boxes"]) > 0 for r in body["results"])  # conf=0 keeps instances: a real comparison


def test_precision_bf16_answers_as_the_python_predictor_at_bf16(png: PNG, tmp_path: Path) -> None:
    _, weights = tiny_weights(MODELS["detect"], tmp_path / "detect.safetensors", seed=3)
    data = png(48, 72, 1)
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    predictor = sightkit.load(weights, "cpu")
    (at_bf16,) = predictor(pixels, conf=0.0, precision="bf16", progress=False)
    (at_fp32,) = predictor(pixels, conf=0.0, progress=False)
    with local_client(create_app(ServeConfig(weights=str(weights), conf=0.0, precision="bf16"))) as client:
        answer = client.post("/v1/predict", files=[("images", ("a.png", data, "image/png"))])
        info = client.get("/v1/model").json()
    assert answer.status_code == 200, answer.text
    assert info["precision"] == "bf16"
    (result,) = answer.json()["results"]
    assert served(result) == python(at_bf16)
    assert served(result) != python(at_fp32)  # bfloat16 moved the scores: the server did run at bf16


def test_segment_masks_as_rle_and_png_and_the_class_shares(segment_weights: Path, png: PNG) -> None:
    """The PNG's pixels are the class map of ``Results.masks``; the RLE decodes to it; the shares
    are its class counts over the pixel count."""
    from pycocotools import mask as coco_mask

    data = png(40, 52, 5)
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    (expected,) = sightkit.load(segment_weights, "cpu")(pixels, progress=False)
    classes = ["background", "a", "b"]  # tiny_weights' classes
    with local_client(create_app(ServeConfig(weights=str(segment_weights)))) as client:
        rle = client.post("/v1/predict", files=[("images", ("m.png", data, "image/png"))]).json()["results"][0]
        as_png = client.post("/v1/predict?mask_format=png", files=[("images", ("m.png", data))]).json()["results"][0]
        bad = client.post("/v1/predict?mask_format=gif", files=[("images", ("m.png", data))])
    decoded = np.zeros((40, 52), dtype=np.int64)
    for record in rle["masks"]:
        decoded[coco_mask.decode({"size": record["size"], "counts": record["counts"]}).astype(bool)] = record["label"]
    assert np.array_equal(decoded, expected.masks)
    picture = Image.open(io.BytesIO(base64.b64decode(as_png["mask"]["data"])))
    assert picture.format == "PNG" and np.array_equal(np.asarray(picture), expected.masks)
    assert as_png["mask"]["names"] == classes and "masks" not in as_png
    counts = np.bincount(expected.masks.reshape(-1), minlength=3)
    assert rle["classes"] == {name: round(c / (40 * 52), 4) for name, c in zip(classes, counts.tolist(), strict=True)}
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"


def test_pose_finds_people_with_the_person_detector(png: PNG, tmp_path: Path) -> None:
    """person_detector= makes the pose model top-down, as ``detector=`` does in Python."""
    _, pose = tiny_weights("rle_r18_tiny", tmp_path / "pose.safetensors", seed=4)
    _, detector = tiny_weights("detr_r18_tiny", tmp_path / "detr.safetensors", seed=5)
    data = png(64, 80, 6)
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    (expected,) = sightkit.load(pose, "cpu")(pixels, detector=str(detector), progress=False)
    (alone,) = sightkit.load(pose, "cpu")(pixels, progress=False)
    settings = ServeConfig(weights=str(pose), person_detector=str(detector), conf=0.0)
    with local_client(create_app(settings)) as client:
        (result,) = client.post("/v1/predict", files=[("images", ("p.png", data))]).json()["results"]
    assert served(result) == python(expected) and python(expected) != python(alone)
