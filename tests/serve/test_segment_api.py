"""/v1/predict with a segmenter: images of one size share a forward pass and are answered as alone."""

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import sightkit
from sightkit.serve.app import create_app
from sightkit.serve.config import ServeConfig
from tests.serve.clients import local_client


def test_images_of_one_size_share_a_batch_and_answer_as_alone(
    segment_weights: Path, png: Callable[[int, int, int], bytes]
) -> None:
    """Three PNGs, two of one size (they share a batch) and one of another: each answer equals
    the Python predictor's on that image alone."""
    images = {"a.png": png(48, 72, 1), "b.png": png(48, 72, 2), "c.png": png(90, 50, 3)}
    predictor = sightkit.load(segment_weights, "cpu")
    settings = ServeConfig(weights=str(segment_weights), max_batch=4, max_wait_ms=200)
    with local_client(create_app(settings)) as client:
        files = [("images", (name, data, "image/png")) for name, data in images.items()]
        body = client.post("/v1/predict", files=files).json()
        info = client.get("/v1/model").json()
        metrics = {
            sample.name: sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples
            if sample.name.startswith("sightkit_batch_size_")
        }
    assert body["task"] == "segment" and body["model"] == "unet_r18_tiny"
    assert info["task"] == "segment" and info["classes"] == ["background", "a", "b"]
    for result, data in zip(body["results"], images.values(), strict=True):
        (alone,) = predictor(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), progress=False)
        assert result["masks"] == alone.to_dict()["masks"]
        assert abs(sum(result["classes"].values()) - 1) < 1e-3
    assert [(r["height"], r["width"]) for r in body["results"]] == [(48, 72), (48, 72), (90, 50)]
    # a and b share a batch (one size), c has its own: 3 images in 2 forward passes.
    assert metrics["sightkit_batch_size_sum"] == 3 and metrics["sightkit_batch_size_count"] == 2
