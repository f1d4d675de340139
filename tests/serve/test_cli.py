"""`sightkit serve` in a subprocess: it listens on loopback, answers, and stops cleanly on
SIGTERM; bad settings are one clear line with exit status 2."""

import os
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
        assert (result["width"], result["height"]) == (60, 40) and len(result["boxes"]) == 20
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


def one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2 and one line on stderr (no traceback) that holds ``message``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in lines[0], lines[0]


@pytest.mark.slow
def test_unusable_ports_hosts_galleries_and_keys_are_one_line(face_weights: Path, tmp_path: Path) -> None:
    """port=99999 and an unwritable gallery= were tracebacks; a port in use was uvicorn's log and
    exit 1 after the models loaded; a host other than loopback without a key served anyone."""

    def serve(*settings: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "sightkit", "serve", f"face_weights={face_weights}", *settings]
        environment = {k: v for k, v in os.environ.items() if k != "SIGHTKIT_API_KEY"} | (env or {})
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=environment)

    one_line_error(serve("port=99999"), "port must be a TCP port number in 0..65535, got 99999")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: a gallery under a file cannot be created by anyone
        (tmp_path / "file").write_text("x")
        gallery = tmp_path / "file" / "g.db"
    else:
        gallery = locked / "g.db"
    one_line_error(serve(f"gallery={gallery}", f"port={free_port()}"), f"gallery={str(gallery)!r} cannot be written")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(serve(f"port={port}"), f"cannot listen on host='127.0.0.1' port={port}")
    one_line_error(serve("host=0.0.0.0"), "host='0.0.0.0' opens the server to the network without a key")
    one_line_error(serve("api_key=s3cret"), "api_key")  # not a setting: the key never goes on the command line
    one_line_error(serve(f"api_key_file={tmp_path / 'none'}"), "does not exist")
