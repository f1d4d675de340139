"""`sightkit serve` in a subprocess: it listens on loopback, answers, and stops cleanly on
SIGTERM; bad settings are one clear line with exit status 2."""

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.mark.slow
def test_serve_answers_and_stops_on_sigterm(
    detector_weights: Path, png: Callable[[int, int, int], bytes], tmp_path: Path
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "sightkit", "serve", f"weights={detector_weights}", f"port={port}", "conf=0"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/healthz", process)
        answer = httpx.post(f"{base}/v1/predict", files=[("images", ("a.png", png(40, 60, 1), "image/png"))])
        assert answer.status_code == 200
        (result,) = answer.json()["results"]
        assert (result["width"], result["height"]) == (60, 40) and len(result["detections"]) == 20
        assert httpx.get(f"{base}/v1/model").json()["model"] == "detr_r18_tiny"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal so that its parent sees it.
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr


def test_bad_settings_are_one_line_with_status_2(tmp_path: Path) -> None:
    def serve(*settings: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "sightkit", "serve", *settings]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    result = serve()
    assert result.returncode == 2 and "weights= (a detector) or face_weights= (a face embedder) is required" in (
        result.stderr
    )
    result = serve(f"weights={tmp_path / 'none.safetensors'}")
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = serve("max_bacth=4")
    assert result.returncode == 2 and "did you mean 'max_batch'" in result.stderr
