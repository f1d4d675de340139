"""/v1/predict with a segmenter: the class fractions of `sightkit predict segment`, batched or not."""

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sightkit.serve.app import create_app
from sightkit.serve.config import ServeConfig
from sightkit.tasks.segment import SegmentPredictConfig, predict


def test_fractions_equal_sightkit_predict_alone_and_in_a_batch(
    segment_weights: Path, png: Callable[[int, int, int], bytes], tmp_path: Path
) -> None:
    """Three PNGs, two of one size (they share a batch) and one of another: each answer holds
    the class fractions `sightkit predict segment` writes for the same file."""
    folder = tmp_path / "images"
    folder.mkdir()
    images = {"a.png": png(48, 72, 1), "b.png": png(48, 72, 2), "c.png": png(90, 50, 3)}
    for name, data in images.items():
        (folder / name).write_bytes(data)
    expected = predict(SegmentPredictConfig(weights=str(segment_weights), source=str(folder), out=str(tmp_path / "p")))
    settings = ServeConfig(weights=str(segment_weights), max_batch=4, max_wait_ms=200)
    with TestClient(create_app(settings)) as client:
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
    assert info["task"] == "segment" and info["classes"] == ["background", "circle", "square"]
    for result, record in zip(body["results"], expected, strict=True):
        assert Path(record["image"]).name == result["image"]
        assert result["classes"] == record["classes"]
        assert abs(sum(result["classes"].values()) - 1) < 1e-3
    assert [(r["height"], r["width"]) for r in body["results"]] == [(48, 72), (48, 72), (90, 50)]
    # a and b share a batch (one padded shape), c has its own: 3 images in 2 forward passes.
    assert metrics["sightkit_batch_size_sum"] == 3 and metrics["sightkit_batch_size_count"] == 2
