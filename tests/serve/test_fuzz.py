"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis): valid
and invalid requests for every operation, sent to a live server on loopback, never get a 5xx.

Images are where the server does real work, so the generated file fields are often replaced by
real images (random pixels, every PNG colour type and bit depth, JPEG, WebP, BMP, damaged
ones, odd sizes) drawn by Hypothesis, so that decoding, detection, alignment, inference and the
gallery are fuzzed too, not only the form parser.
"""

import contextlib
import io
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image

from sightkit.serve.app import create_app
from sightkit.serve.config import ServeConfig
from tests.serve.clients import face_detector_weights, live_server
from tests.tasks.tiny import tiny_weights

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (dev extra)")

#: Examples per operation and generation mode (positive: valid per the schema; negative: not).
EXAMPLES = 25
#: The fuzzing stops starting new operations past this many seconds (the suite's time budget).
BUDGET_S = 75.0


def picture(width: int, height: int, seed: int, fmt: str, mode: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def png16(width: int, height: int, colour: int, seed: int) -> bytes:
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    values = np.random.default_rng(seed).integers(0, 65536, (height, width * channels)).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in values)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


sides = st.integers(1, 80)
encoded = st.builds(
    picture,
    sides,
    sides,
    st.integers(0, 2**16),
    st.sampled_from(["PNG", "JPEG", "WEBP", "BMP"]),
    st.sampled_from(["RGB", "L"]),
)
images = st.one_of(
    encoded,
    st.builds(png16, sides, sides, st.sampled_from([0, 2, 4, 6]), st.integers(0, 2**16)),
    st.builds(lambda data, cut: data[: max(1, len(data) * cut // 100)], encoded, st.integers(1, 99)),  # truncated
    st.binary(max_size=64),
)


def fuzz(operation: object, mode: object, statuses: Counter, failures: list[str]) -> None:
    """Send :data:`EXAMPLES` requests for ``operation`` generated in ``mode``; count the statuses."""
    label = f"{operation.method.upper()} {operation.path}"

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        case=operation.as_strategy(generation_mode=mode),
        files=st.lists(images, min_size=1, max_size=3),
        plain=st.booleans(),
        name=st.sampled_from(["alice", "bob", "Ame\u0301lie"]),
    )
    def call(case: object, files: list[bytes], plain: bool, name: str) -> None:
        body = case.body
        if isinstance(body, dict) and (plain or any(key in body for key in ("images", "image"))):
            # Real images in the file fields (the generated ones are seldom images, sometimes absent).
            if "verify" in label:
                body["image"] = files[0]
            else:
                body["images"] = files
            if plain:  # and half of those without random landmarks, with a plausible name: deeper paths
                body.pop("landmarks", None)
                if "name" in body:
                    body["name"] = name
        response = case.call()
        statuses[(label, response.status_code)] += 1
        if response.status_code >= 500:
            failures.append(f"{label} -> {response.status_code}: {response.text[:300]}")

    with contextlib.suppress(Unsatisfiable):  # an operation without parameters has no invalid requests to make
        call()


@pytest.mark.slow
def test_no_request_gets_a_5xx(tmp_path: Path) -> None:
    _, detector = tiny_weights("detr_r18_tiny", tmp_path / "detr.safetensors", seed=1)
    _, embedder = tiny_weights("iresnet_tiny", tmp_path / "face.safetensors", seed=2)
    faces = face_detector_weights(tmp_path / "faces.safetensors", bias=2.0)  # some faces in any image
    settings_ = ServeConfig(
        weights=str(detector),
        face_weights=str(embedder),
        face_detector=str(faces),
        gallery=str(tmp_path / "g.db"),
        max_images=4,
        timeout_s=60,
    )
    statuses: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    start = time.monotonic()
    with live_server(create_app(settings_)) as (host, port, _):
        schema = schemathesis.openapi.from_url(f"http://{host}:{port}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                if time.monotonic() - start > BUDGET_S:
                    break
                fuzz(operation, mode, statuses, failures)
    sent = sum(statuses.values())
    print(f"\nfuzzing: {sent} requests in {time.monotonic() - start:.1f} s, 5xx: {len(failures)}")
    for (label, status), count in sorted(statuses.items()):
        print(f"  {label} {status}: {count}")
    assert not failures, "\n".join(failures)
    assert sent >= 150  # a real search, not a handful
    assert any(status == 200 for (label, status) in statuses if label == "POST /v1/face/identify")
