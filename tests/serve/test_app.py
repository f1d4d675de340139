"""The HTTP API with FastAPI's test client: answers equal `sightkit predict`'s, bad uploads get
4xx JSON errors, concurrent requests are batched and answered as if alone, metrics, limits."""

import asyncio
import hashlib
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sightkit.serve.app import create_app
from sightkit.serve.config import ServeConfig
from tests.serve.clients import local_client

CLASSES = ["circle", "square", "triangle"]  # as in conftest.detector_weights
PNG = Callable[[int, int, int], bytes]


def client_for(weights: Path, **settings: object) -> TestClient:
    return local_client(create_app(ServeConfig(weights=str(weights), **settings)))


def upload(*images: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "image/png")) for name, data in images]


def metric_samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def detections(result: dict) -> list[tuple[str, float, list[float]]]:
    """(name, score, box) of each instance of a /v1/predict detect answer."""
    return list(zip(result["names"], result["scores"], result["boxes"], strict=True))


def test_conf_and_top_k_filter_the_answer(detector_weights: Path, png: PNG) -> None:
    image = upload(("a.png", png(64, 64, 3)))
    with client_for(detector_weights, conf=0.0) as client:
        everything = detections(client.post("/v1/predict", files=image).json()["results"][0])
        middle = sorted(score for _, score, _ in everything)[10]
        filtered = detections(client.post(f"/v1/predict?conf={middle}", files=image).json()["results"][0])
        first3 = detections(client.post("/v1/predict?top_k=3", files=image).json()["results"][0])
    assert len(everything) == 20  # conf=0 keeps all of detr_r18_tiny's 20 queries
    assert filtered == [d for d in everything if d[1] >= middle] and 0 < len(filtered) < 20
    assert first3 == everything[:3]
    assert all(name in CLASSES for name, _, _ in everything)


@pytest.mark.parametrize(
    ("kind", "status", "code", "message"),
    [
        ("text", 415, "unsupported_type", r"cat\.jpg: the content is not a JPEG, PNG"),
        ("truncated png", 400, "damaged_image", r"cat\.jpg: the PNG image cannot be decoded .*truncated"),
        ("empty", 415, "unsupported_type", "the upload is empty"),
    ],
)
def test_bad_uploads_are_4xx_json_and_the_server_goes_on(
    detector_weights: Path, png: PNG, kind: str, status: int, code: str, message: str
) -> None:
    data = {"text": b"plain text, renamed to .jpg\n", "truncated png": png(40, 40, 4)[:300], "empty": b""}[kind]
    with client_for(detector_weights) as client:
        response = client.post("/v1/predict", files=[("images", ("cat.jpg", data, "image/jpeg"))])
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] == code
        assert re.search(message, response.json()["detail"])
        assert client.post("/v1/predict", files=upload(("ok.png", png(32, 32, 5)))).status_code == 200


def test_limits_on_size_count_pixels_and_fields(detector_weights: Path, png: PNG) -> None:
    with client_for(detector_weights, max_upload_mb=0.01, max_images=2, max_pixels=2000) as client:
        big = client.post("/v1/predict", files=upload(("big.png", png(100, 100, 6))))
        assert big.status_code == 413 and big.json()["error"] == "too_large"
        assert "larger than the limit of 10485 bytes" in big.json()["detail"]

        def chunks():  # no Content-Length: counted while it streams
            for _ in range(20):
                yield b"x" * 1000

        streamed = client.post(
            "/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert streamed.status_code == 413 and streamed.json()["error"] == "too_large"

        small = ("s.png", png(20, 20, 7))
        many = client.post("/v1/predict", files=upload(small, small, small))
        assert many.status_code == 413 and many.json() == {
            "detail": "3 images in one request; max_images=2",
            "error": "too_many_images",
        }
        pixels = client.post("/v1/predict", files=upload(("wide.png", png(20, 101, 8))))
        assert pixels.status_code == 413 and "20 x 101" not in pixels.json()["detail"]
        assert "101 x 20 pixels is more than the limit of 2000 pixels" in pixels.json()["detail"]

        missing = client.post("/v1/predict", data={"other": "x"})
        assert missing.status_code == 422 and missing.json() == {
            "detail": "images: Field required",
            "error": "invalid_request",
        }
        bad_conf = client.post("/v1/predict?conf=1.5", files=upload(small))
        assert bad_conf.status_code == 422 and bad_conf.json()["detail"].startswith("conf: ")
        unknown = client.get("/v2/nothing")
        assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
        assert client.get("/v1/predict").status_code == 405


def test_concurrent_requests_are_batched_and_answered_as_if_alone(detector_weights: Path, png: PNG) -> None:
    """Eight threads post at once (max_wait_ms=300 gives them time to meet): the answers equal
    the answers of single requests, and the metrics count batches of more than one image."""
    images = [png(64, 64, 10 + i) for i in range(8)]
    with client_for(detector_weights, conf=0.0, max_batch=8, max_wait_ms=300) as client:
        alone = []
        for i, data in enumerate(images):  # one at a time: each its own batch
            alone.append(client.post("/v1/predict", files=upload((f"{i}.png", data))).json())
        together: list[dict] = [{}] * len(images)
        barrier = threading.Barrier(len(images))

        def post(i: int) -> None:
            barrier.wait()
            together[i] = client.post("/v1/predict", files=upload((f"{i}.png", images[i]))).json()

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        samples = metric_samples(client)

    for single, batched in zip(alone, together, strict=True):
        got, want = detections(batched["results"][0]), detections(single["results"][0])
        assert [name for name, _, _ in got] == [name for name, _, _ in want]
        for (_, got_score, got_box), (_, score, box) in zip(got, want, strict=True):
            assert got_score == pytest.approx(score, abs=2e-4)
            assert got_box == pytest.approx(box, abs=0.02)
    model = (("model", "detr_r18_tiny"),)
    batches = samples[("sightkit_batch_size_count", model)]
    assert samples[("sightkit_batch_size_sum", model)] == 16  # 8 alone + 8 together
    assert batches < 16  # some batches held more than one image
    assert samples[("sightkit_requests_total", (("endpoint", "/v1/predict"), ("status", "200")))] == 16
    assert samples[("sightkit_request_seconds_count", (("endpoint", "/v1/predict"),))] == 16


def test_model_info_health_and_openapi(detector_weights: Path) -> None:
    with client_for(detector_weights, max_batch=4, max_wait_ms=2.5) as client:
        info = client.get("/v1/model").json()
        assert client.get("/healthz").json() == {"status": "ok"}
        schema = client.get("/openapi.json").json()
        page = client.get("/")
        # Swagger UI and ReDoc load their scripts from a CDN, blank offline: off, the schema stays.
        docs = [client.get(path).status_code for path in ("/docs", "/redoc")]
    assert info["task"] == "detect" and info["classes"] == CLASSES and info["category_ids"] == [1, 2, 5]
    assert (info["imgsz"], info["max_size"]) == (64, 96)
    assert info["weights_sha256"] == hashlib.sha256(detector_weights.read_bytes()).hexdigest()
    assert info["batching"] == {"max_batch": 4, "max_wait_ms": 2.5, "max_queue": 256}
    assert info["precision"] == "fp32"
    assert info["face"] is None
    predict_op = schema["paths"]["/v1/predict"]["post"]
    body_ref = predict_op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    body = schema["components"]["schemas"][body_ref]
    assert body["required"] == ["images"] and body["properties"]["images"]["type"] == "array"
    ok = predict_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/PredictResponse")
    for status in ("400", "413", "415", "422", "503", "504"):
        assert predict_op["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"conf", "top_k", "mask_format"} == {p["name"] for p in predict_op["parameters"]}
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert docs == [404, 404] and schema["openapi"].startswith("3.")


def test_overload_timeout_and_model_errors_are_json(detector_weights: Path, png: PNG) -> None:
    image = upload(("a.png", png(32, 32, 20)))
    with client_for(detector_weights, timeout_s=0.05) as client:
        batcher = client.app.state.server.batchers["predict"]
        real = batcher.infer

        release = threading.Event()

        def slow(items: list) -> list:
            release.wait(10)
            return real(items)

        batcher.infer = slow
        late = client.post("/v1/predict", files=image)
        assert late.status_code == 504 and late.json()["error"] == "timeout"
        assert "timeout_s=0.05" in late.json()["detail"]
        release.set()
        client.app.state.server.config.timeout_s = 30.0  # the model is free again once the slow batch ends

        def broken(items: list) -> list:
            raise RuntimeError("CUDA out of memory (simulated)")

        batcher.infer = broken
        failed = client.post("/v1/predict", files=image)
        assert failed.status_code == 500 and failed.json() == {
            "detail": "inference failed: RuntimeError: CUDA out of memory (simulated)",
            "error": "inference_failed",
        }
        batcher.infer = real
        assert client.post("/v1/predict", files=image).status_code == 200
        batcher.max_queue = 0  # every new request finds the queue full
        busy = client.post("/v1/predict", files=image)
        assert busy.status_code == 503 and busy.json()["error"] == "overloaded"
        assert busy.headers["retry-after"] == "1"


def test_bad_settings_fail_before_serving(detector_weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"weights= .* or face_weights= .* is required"):
        create_app(ServeConfig())
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        create_app(ServeConfig(weights=str(detector_weights), max_batch=0))
    with pytest.raises(ValueError, match=r"conf must be in \[0, 1\], got 2"):
        create_app(ServeConfig(weights=str(detector_weights), conf=2))
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        create_app(ServeConfig(weights=str(detector_weights), precision="fp16"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_app(ServeConfig(weights=str(tmp_path / "missing.safetensors")))


def test_body_limit_answers_before_the_app_reads() -> None:
    """BodyLimit alone (ASGI): a bad or too large Content-Length never reaches the app."""
    from sightkit.serve.app import BodyLimit

    reached = []

    async def app(scope: dict, receive: object, send: object) -> None:
        reached.append(scope)

    async def call(length: bytes) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        await BodyLimit(app, 10)({"type": "http", "headers": [(b"content-length", length)]}, receive, send)
        return sent

    bad = asyncio.run(call(b"ten"))
    assert bad[0]["status"] == 400 and b"Content-Length must be a number of bytes" in bad[1]["body"]
    big = asyncio.run(call(b"11"))
    assert big[0]["status"] == 413 and b"larger than the limit of 10 bytes" in big[1]["body"]
    assert reached == []
    assert asyncio.run(call(b"10")) == [] and len(reached) == 1
