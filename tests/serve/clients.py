"""Helpers of the serving tests: a test client on localhost, a live server on a loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sightkit.serve.app import graceful_server
from tests.tasks.tiny import tiny_weights


def local_client(app: FastAPI, **kwargs: object) -> TestClient:
    """FastAPI's test client addressing the app as ``http://localhost`` (a loopback server refuses
    other Host names, the test client's default ``testserver`` among them)."""
    return TestClient(app, base_url="http://localhost", **kwargs)


@contextmanager
def live_server(app: FastAPI, **settings: object) -> Iterator[tuple[str, int, uvicorn.Server]]:
    """``app`` under uvicorn (the server class of ``sightkit serve``) in a thread on a free loopback
    port: ``(host, port, server)``; setting ``server.should_exit`` is what SIGTERM does."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **settings)
    server = graceful_server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port, server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of text ``fields`` and ``(field, filename, data)`` files, and
    its content type (for clients that send raw bytes, e.g. ``http.client``)."""
    boundary = "sightkit-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    for field, filename, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def face_detector_weights(path: Path, bias: float) -> Path:
    """Random face_detector_tiny weights whose every anchor scores ``sigmoid(bias)``: faces
    everywhere (bias > 0) or nowhere (bias < 0), whatever the image."""
    tiny_weights("face_detector_tiny", path, seed=7)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    tensors["cls_head.bias"] = torch.full_like(tensors["cls_head.bias"], bias)
    save_file(tensors, str(path), metadata=metadata)
    return path
