"""Hostile and broken requests: every one is a 4xx JSON error (never a 500), nothing is written,
and the keep-alive connection goes on; an unexpected failure is a JSON 500 that keeps the
connection too; SIGTERM finishes what was sent before it."""

import http.client
import io
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from sightkit.serve.app import create_app
from sightkit.serve.config import ServeConfig
from sightkit.serve.images import decode_image
from tests.serve.clients import live_server, local_client, multipart

PNG = Callable[[int, int, int], bytes]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, depth: int = 8, colour: int = 2, rows: bytes | None = None) -> bytes:
    """A PNG written by hand (so that its header may claim anything): ``colour`` 0 grey, 2 RGB."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    if rows is None:
        rows = b"".join(b"\x00" + bytes(width * channels * depth // 8) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def face_app(face_weights: Path, tmp_path: Path) -> FastAPI:
    return create_app(ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "g.db")))


@pytest.fixture
def live(face_app: FastAPI) -> Iterator[tuple[FastAPI, http.client.HTTPConnection]]:
    """The face app under uvicorn and one keep-alive connection to it."""
    with live_server(face_app) as (host, port, _):
        connection = http.client.HTTPConnection(host, port, timeout=30)
        yield face_app, connection
        connection.close()


def post(connection: http.client.HTTPConnection, path: str, fields: dict, files: list) -> tuple[int, dict]:
    body, content_type = multipart(fields, files)
    connection.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def same_connection_answers(connection: http.client.HTTPConnection) -> None:
    """The connection that carried the error still answers (no reset, no reconnection)."""
    before = connection.sock
    time.sleep(0.2)  # the server closed a poisoned connection right after its answer
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
    assert connection.sock is before


# --------------------------------------------------------------------------- connections


def test_an_unexpected_failure_is_a_json_500_and_the_connection_goes_on(
    live: tuple[FastAPI, http.client.HTTPConnection], png: PNG, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (here a KeyError while cropping) answers JSON 500 through uvicorn; Starlette re-raised
    it and uvicorn then closed the keep-alive connection, resetting the client's next request."""
    app, connection = live

    def broken(*args: object) -> None:
        raise KeyError("simulated bug")

    monkeypatch.setattr(app.state.server.face, "crop", broken)
    status, body = post(connection, "/v1/face/identify", {}, [("images", "a.png", png(32, 32, 1))])
    assert status == 500 and body == {"detail": "internal error: KeyError: 'simulated bug'", "error": "internal"}
    same_connection_answers(connection)


FIVE = [[20.0, 25.0], [44.0, 24.0], [32.0, 36.0], [23.0, 47.0], [41.0, 47.0]]
BAD_LANDMARKS = {
    "coincident": (json.dumps([[[5, 5]] * 5]), "the five points span 0 pixels"),
    "nearly coincident": (json.dumps([[[5, 5], [5.5, 5], [5, 5.5], [5.2, 5], [5, 5.1]]]), "span 0.5 pixels"),
    "NaN": ("[[[NaN, 1], [2, 3], [4, 5], [6, 7], [8, 9]]]", "pairs of finite numbers"),
    "Infinity": ("[[[Infinity, 1], [2, 3], [4, 5], [6, 7], [8, 9]]]", "pairs of finite numbers"),
    "overflowing float": (json.dumps([[[1e39, 1], *FIVE[1:]]]).replace("1e+39", "1e400"), "finite numbers"),
    "out of the image": (json.dumps([[[1e6, 5], *FIVE[1:]]]), "the point [1e+06, 5] lies outside a.png (64 x 64"),
    "negative": (json.dumps([[[-3, 5], *FIVE[1:]]]), "the point [-3, 5] lies outside"),
    "booleans": (json.dumps([[[True, False], *FIVE[1:]]]), "pairs of finite numbers"),
    "strings": (json.dumps([[["1", "2"], *FIVE[1:]]]), "pairs of finite numbers"),
    "four points": (json.dumps([FIVE[:4]]), "expected five [x, y] pairs"),
    "three coordinates": (json.dumps([[[1, 2, 3], *FIVE[1:]]]), "expected five [x, y] pairs"),
    "an object": (json.dumps({"a": FIVE}), "expected a list of 1 entries (one per image), got dict"),
    "nested 100000 deep": ("[" * 100_000 + "]" * 100_000, "landmarks: not JSON (RecursionError"),
    "100000 entries": (json.dumps([None] * 100_000), "expected a list of 1 entries (one per image), got a list of"),
    "not JSON": ("[[1, 2]", "landmarks: not JSON"),
}


@pytest.mark.parametrize("case", list(BAD_LANDMARKS))
def test_bad_landmarks_are_422_nothing_is_enrolled_and_the_connection_goes_on(
    live: tuple[FastAPI, http.client.HTTPConnection], png: PNG, case: str
) -> None:
    """Five points at one place gave a 500 from the alignment's SVD (the issue's example); brackets
    nested deeper than Python's recursion limit gave a 500 from the JSON parser; points outside
    the image were warped into a black crop and enrolled."""
    _, connection = live
    landmarks, message = BAD_LANDMARKS[case]
    fields = {"name": "alice", "landmarks": landmarks}
    status, body = post(connection, "/v1/face/enroll", fields, [("images", "a.png", png(64, 64, 2))])
    assert status == 422 and body["error"] == "invalid_request", body
    assert message in body["detail"]
    connection.request("GET", "/v1/face")
    response = connection.getresponse()
    assert json.loads(response.read()) == {"identities": {}}
    same_connection_answers(connection)


def test_landmarks_at_the_image_border_are_accepted(face_app: FastAPI, png: PNG) -> None:
    """Continuous coordinates: (0, 0) and (width, height) are the image's corners, inside."""
    border = [[0, 0], [64, 0], [32, 32], [0, 64], [64, 64]]
    with local_client(face_app) as client:
        answer = client.post(
            "/v1/face/enroll",
            data={"name": "alice", "landmarks": json.dumps([border])},
            files=[("images", ("a.png", png(64, 64, 3), "image/png"))],
        )
    assert answer.status_code == 200 and answer.json()["total"] == 1, answer.text


# --------------------------------------------------------------------------- images


def test_every_pillow_mode_decodes_to_its_rgb(png: PNG) -> None:
    """Each mode the allowed formats can hold decodes to Pillow's own RGB of it; 16-bit grey
    keeps its top 8 bits (Pillow's conversion clipped it at 255: a white picture)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    cases = [
        (rgb.convert(mode), fmt)
        for fmt, modes in {
            "PNG": ["1", "L", "LA", "P", "RGB", "RGBA"],
            "JPEG": ["L", "RGB", "CMYK"],
            "WEBP": ["RGB", "RGBA"],
            "BMP": ["1", "L", "P", "RGB"],
        }.items()
        for mode in modes
    ]
    for image, fmt in cases:
        data = encoded(image, fmt)
        want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        got = decode_image(data, "x").permute(1, 2, 0).numpy()
        assert np.array_equal(got, want), (image.mode, fmt)
    grey16 = (np.arange(99, dtype=np.uint16).reshape(9, 11) * 650).astype(">u2")
    data = png_bytes(11, 9, depth=16, colour=0, rows=b"".join(b"\x00" + row.tobytes() for row in grey16))
    got = decode_image(data, "x")
    assert np.array_equal(got[0].numpy(), (grey16.astype(np.int64) >> 8).astype(np.uint8))
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2]) and int(got.max()) == 98 * 650 >> 8


def damaged_images(png: PNG) -> dict[str, tuple[bytes, int, str]]:
    good = png(16, 16, 1)
    jpeg = encoded(Image.fromarray(np.zeros((32, 32, 3), np.uint8)), "JPEG")
    header_end = 8 + 25
    return {
        "bad IHDR checksum": (good[: header_end - 4] + b"\x00\x00\x00\x00" + good[header_end:], 400, "damaged_image"),
        "IDAT of random bytes": (png_bytes(8, 8, rows=bytes(range(256)) * 3)[:-12] + chunk(b"IEND", b""), 400, "dam"),
        "PNG truncated": (good[:60], 400, "damaged_image"),
        "PNG signature only": (good[:8], 400, "damaged_image"),
        "JPEG truncated": (jpeg[: len(jpeg) // 2], 400, "damaged_image"),
        "JPEG start of image only": (b"\xff\xd8\xff", 400, "damaged_image"),
        "BMP header only": (b"BM" + bytes(12), 400, "damaged_image"),
        "RIFF that is not WebP": (b"RIFF\x10\x00\x00\x00WAVEfmt ", 400, "damaged_image"),
        "zero width": (png_bytes(0, 4), 400, "damaged_image"),
        "GIF": (encoded(Image.new("RGB", (4, 4)), "GIF"), 415, "unsupported_type"),
        "TIFF": (encoded(Image.new("RGB", (4, 4)), "TIFF"), 415, "unsupported_type"),
        "text": (b"<html>not an image</html>", 415, "unsupported_type"),
        "empty": (b"", 415, "unsupported_type"),
        "50000 x 50000 claimed by a small PNG": (png_bytes(50_000, 50_000, rows=b""), 413, "too_many_pixels"),
    }


def test_damaged_and_foreign_images_are_4xx_through_a_live_server(
    live: tuple[FastAPI, http.client.HTTPConnection], png: PNG
) -> None:
    _, connection = live
    for case, (data, status, code) in damaged_images(png).items():
        got, body = post(connection, "/v1/face/identify", {}, [("images", "x.png", data)])
        assert (got, body["error"][: len(code)]) == (status, code), (case, body)
    same_connection_answers(connection)


def test_extreme_aspect_ratios_and_tiny_images(face_app: FastAPI, detector_weights: Path) -> None:
    """A 1 x 4000 image resized for the detector (shorter side 64, longer at most 96) became
    0 pixels high: a 500 from inside the transform (and for a segmenter, whose longer side is
    not capped, a 64 x 256000 tensor). Now a 422 naming the upload, under max_aspect."""
    sizes = {"wide.png": (4000, 1), "tall.png": (1, 4000), "dot.png": (1, 1), "strip.png": (66, 2)}
    images = {name: encoded(Image.new("RGB", size, (90, 120, 30)), "PNG") for name, size in sizes.items()}
    with local_client(create_app(ServeConfig(weights=str(detector_weights), conf=0.0))) as client:
        for name in ("wide.png", "tall.png", "strip.png"):
            answer = client.post("/v1/predict", files=[("images", (name, images[name], "image/png"))])
            assert answer.status_code == 422, answer.text
            size = "{} x {}".format(*sizes[name])
            assert answer.json() == {
                "detail": f"{name}: {size} pixels; one side may be at most max_aspect=32 times the other",
                "error": "extreme_aspect",
            }
        dot = client.post("/v1/predict", files=[("images", ("dot.png", images["dot.png"], "image/png"))])
        assert dot.status_code == 200 and dot.json()["results"][0]["width"] == 1
    with local_client(create_app(ServeConfig(weights=str(detector_weights), max_aspect=40))) as client:
        strip = client.post("/v1/predict", files=[("images", ("strip.png", images["strip.png"], "image/png"))])
        assert strip.status_code == 200 and strip.json()["results"][0]["height"] == 2, strip.text
    with local_client(face_app) as client:
        answer = client.post("/v1/face/identify", files=[("images", ("tall.png", images["tall.png"], "image/png"))])
        assert answer.status_code == 422 and answer.json()["error"] == "extreme_aspect"


def test_the_pixel_limit_is_checked_from_the_header(face_app: FastAPI, face_weights: Path, tmp_path: Path) -> None:
    small = ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "s.db"), max_pixels=100)
    data = encoded(Image.new("RGB", (11, 10)), "PNG")
    with local_client(create_app(small)) as client:
        answer = client.post("/v1/face/identify", files=[("images", ("a.png", data, "image/png"))])
    assert answer.status_code == 413
    assert answer.json() == {
        "detail": "a.png: 11 x 10 pixels is more than the limit of 100 pixels",
        "error": "too_many_pixels",
    }


# --------------------------------------------------------------------------- JSON and forms


def test_malformed_bodies_and_fields_are_4xx(face_app: FastAPI, png: PNG) -> None:
    image = [("images", ("a.png", png(32, 32, 4), "image/png"))]
    with local_client(face_app) as client:
        cases = {
            "JSON instead of a form": client.post("/v1/face/enroll", json={"name": "x", "images": []}),
            "no images": client.post("/v1/face/identify", data={"landmarks": "[]"}),
            "images as text": client.post("/v1/face/identify", data={"images": "not a file"}),
            "broken multipart": client.post(
                "/v1/face/identify",
                content=b"--b\r\nbroken",
                headers={"content-type": "multipart/form-data; boundary=b"},
            ),
            "multipart without boundary": client.post(
                "/v1/face/identify", content=b"x", headers={"content-type": "multipart/form-data"}
            ),
            "top_k of 0": client.post("/v1/face/identify?top_k=0", files=image),
            "top_k not a number": client.post("/v1/face/identify?top_k=many", files=image),
            "top_k huge": client.post(f"/v1/face/identify?top_k={10**30}", files=image),
            "name of 10000 characters": client.post("/v1/face/enroll", data={"name": "x" * 10_000}, files=image),
            "verify with neither": client.post("/v1/face/verify", files=[("image", ("a.png", png(8, 8, 1)))]),
            "delete an unknown name": client.delete("/v1/face/nobody"),
            "delete a control character": client.delete("/v1/face/a%07b"),
            "delete a path": client.delete("/v1/face/..%2F..%2Fetc"),
            "static outside its folder": client.get("/static/..%2F..%2Fapp.py"),
            "100 form fields": client.post("/v1/face/identify", data={f"f{i}": "x" for i in range(100)}, files=image),
            "40 files": client.post("/v1/face/identify", files=image * 40),
            "a file name of 100000 characters": client.post(
                "/v1/face/identify", files=[("images", ("a" * 100_000 + ".png", png(8, 8, 1), "image/png"))]
            ),
            "landmarks of 2 MB": client.post("/v1/face/identify", data={"landmarks": "[" * 2_000_000}, files=image),
            "landmarks of 450001 numbers": client.post(
                "/v1/face/identify", data={"landmarks": "[" + "0," * 450_000 + "0]"}, files=image
            ),
            "name of 1 MB": client.post("/v1/face/enroll", data={"name": "x" * 1_000_000}, files=image),
            "top_k of 1e309": client.post("/v1/face/identify?top_k=1e309", files=image),
        }
        for case, answer in cases.items():
            assert 400 <= answer.status_code < 500, (case, answer.status_code, answer.text)
            assert set(answer.json()) == {"detail", "error"}, case
        assert client.get("/v1/face").json() == {"identities": {}}


# --------------------------------------------------------------------------- shutdown


def test_sigterm_finishes_requests_already_queued_and_sent(face_app: FastAPI, png: PNG) -> None:
    """Requests queued behind a slow model when the server is told to stop (what SIGTERM does)
    are all answered 200; so is the request of a connection opened just before the signal
    whose bytes arrive just after it (uvicorn closed such connections: a reset)."""
    with live_server(face_app) as (host, port, server):
        batcher = face_app.state.server.batchers["face"]
        batcher.max_batch, real = 1, batcher.infer

        def slow(items: list) -> list:
            time.sleep(0.3)
            return real(items)

        batcher.infer = slow
        statuses: list[int] = []

        def identify() -> None:
            connection = http.client.HTTPConnection(host, port, timeout=60)
            statuses.append(post(connection, "/v1/face/identify", {}, [("images", "a.png", png(32, 32, 5))])[0])

        threads = [threading.Thread(target=identify) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while batcher.queued + len(statuses) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # at least three wait in the queue behind the first
        late = socket.create_connection((host, port))
        time.sleep(0.1)  # accepted by the server, nothing sent yet
        server.should_exit = True
        time.sleep(0.2)
        late.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = late.recv(4096)
        late.close()
        for thread in threads:
            thread.join(timeout=60)
    assert statuses == [200, 200, 200, 200]
    assert answer.startswith(b"HTTP/1.1 200"), answer


def test_refusals_before_the_body_is_read_keep_the_connection(
    live: tuple[FastAPI, http.client.HTTPConnection], png: PNG, face_weights: Path, tmp_path: Path
) -> None:
    """A request refused before its body is read (another Host, another page's Origin, a body
    over the limit by its Content-Length) leaves the rest of the body on the connection; the
    server skips it and answers the next request there."""
    _, connection = live
    body, content_type = multipart({"name": "x"}, [("images", "a.png", png(200, 200, 3))])
    refusals = [
        ({"Host": "evil.example"}, 403, "forbidden_host"),
        ({"Origin": "http://evil.example"}, 403, "cross_origin"),
    ]
    for headers, status, code in refusals:
        connection.request("POST", "/v1/face/enroll", body=body, headers={"Content-Type": content_type, **headers})
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())["error"]) == (status, code)
        same_connection_answers(connection)
    settings = ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "s.db"), max_upload_mb=0.05)
    with live_server(create_app(settings)) as (host, port, _):
        small = http.client.HTTPConnection(host, port, timeout=30)
        small.request("POST", "/v1/face/identify", body=body, headers={"Content-Type": content_type})
        response = small.getresponse()
        assert (response.status, json.loads(response.read())["error"]) == (413, "too_large")
        same_connection_answers(small)
        small.close()
