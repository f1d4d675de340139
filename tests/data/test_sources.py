"""iter_source: every kind of source gives the same RGB pixels; videos stream their frames in
order; URLs are fetched; unreadable files are reported and skipped, or stop the stream;
bad in-memory images are errors that name ``source``."""

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sightkit.data.sources import Frame, SourceError, count_source, iter_source


def _picture(seed: int = 0, height: int = 24, width: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _frames(source, **kwargs) -> list[Frame]:
    return list(iter_source(source, **kwargs))


@pytest.fixture
def png(tmp_path: Path) -> tuple[Path, np.ndarray]:
    pixels = _picture()
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_every_in_memory_kind_and_the_file_give_the_same_pixels(png: tuple[Path, np.ndarray]) -> None:
    path, pixels = png
    chw = torch.from_numpy(pixels).permute(2, 0, 1)
    sources = {
        "path": path,
        "str": str(path),
        "pil": Image.open(path),
        "numpy": pixels,
        "tensor uint8": chw,
        "tensor float": chw.double() / 255,
        "batch": chw[None],
    }
    for kind, source in sources.items():
        (frame,) = _frames(source)
        assert frame.image.dtype == np.uint8 and frame.image.flags.c_contiguous, kind
        assert np.array_equal(frame.image, pixels), kind
        assert frame.index is None, kind
    assert _frames(path)[0].path == str(path)


def test_grayscale_rgba_and_pil_modes_become_rgb(png: tuple[Path, np.ndarray]) -> None:
    _, pixels = png
    gray = pixels[..., 0]
    assert np.array_equal(_frames(gray)[0].image, np.stack([gray] * 3, -1))
    rgba = np.concatenate([pixels, np.full((*pixels.shape[:2], 1), 9, np.uint8)], -1)
    assert np.array_equal(_frames(rgba)[0].image, pixels)
    assert np.array_equal(_frames(Image.fromarray(rgba, "RGBA"))[0].image, pixels)
    assert np.array_equal(_frames(Image.fromarray(gray, "L"))[0].image, np.stack([gray] * 3, -1))
    one_channel = torch.from_numpy(gray)[None]
    assert np.array_equal(_frames(one_channel)[0].image, np.stack([gray] * 3, -1))


def test_a_batch_tensor_gives_one_frame_per_image_and_a_list_keeps_its_order(tmp_path: Path) -> None:
    a, b = _picture(1), _picture(2)
    batch = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)
    assert [f.image.tolist() for f in _frames(batch)] == [a.tolist(), b.tolist()]
    Image.fromarray(b).save(tmp_path / "b.png")
    frames = _frames([a, tmp_path / "b.png", Image.fromarray(a)])
    assert [f.path for f in frames] == ["image0", str(tmp_path / "b.png"), "image2"]
    assert [np.array_equal(f.image, want) for f, want in zip(frames, [a, b, a], strict=True)] == [True] * 3


def test_folders_are_recursive_and_sorted_and_globs_match(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    names = ["b.png", "a.jpg", "sub/c.bmp"]
    for i, name in enumerate(names):
        cv2.imwrite(str(tmp_path / name), _picture(i)[..., ::-1])
    (tmp_path / "notes.txt").write_text("not an image")
    assert [Path(f.path).name for f in _frames(tmp_path)] == ["a.jpg", "b.png", "c.bmp"]
    assert [Path(f.path).name for f in _frames(str(tmp_path / "*.png"))] == ["b.png"]
    assert [Path(f.path).name for f in _frames(str(tmp_path / "**" / "*.bmp"))] == ["c.bmp"]
    assert np.array_equal(_frames(tmp_path / "b.png")[0].image, _picture(0))  # PNG is lossless: exact pixels
    assert count_source(tmp_path) == 3


def test_a_video_streams_its_frames_in_order(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    # Flat colours survive MJPG almost exactly; each frame has its own, with R != B to catch a BGR mix-up.
    colours = [(200, 30, 60), (20, 180, 90), (60, 60, 220), (250, 250, 10), (5, 120, 160)]
    for colour in colours:
        writer.write(np.full((24, 32, 3), colour[::-1], np.uint8))  # OpenCV writes BGR
    writer.release()
    frames = _frames(path)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert {f.path for f in frames} == {str(path)}
    for frame, colour in zip(frames, colours, strict=True):
        assert frame.image.shape == (24, 32, 3)
        assert np.abs(frame.image.astype(int) - colour).max() <= 6
    assert count_source(path) == 5
    assert count_source([path, _picture()]) == 6


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_urls_are_fetched_from_loopback(tmp_path: Path, server: str) -> None:
    pixels = _picture(3)
    Image.fromarray(pixels).save(tmp_path / "remote.png")
    (frame,) = _frames(f"{server}/remote.png")
    assert np.array_equal(frame.image, pixels)
    assert frame.path == f"{server}/remote.png"
    skipped = []
    assert _frames(f"{server}/missing.png", report=lambda p, r: skipped.append((p, r))) == []
    assert skipped == [(f"{server}/missing.png", "HTTP 404 File not found")]
    _truncated_jpeg(tmp_path / "cut.jpg")
    assert _frames(f"{server}/cut.jpg", report=lambda p, r: skipped.append((p, r))) == []
    assert skipped[-1][0] == f"{server}/cut.jpg" and "truncated JPEG" in skipped[-1][1]
    writer = cv2.VideoWriter(str(tmp_path / "remote.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for value in (40, 160):
        writer.write(np.full((24, 32, 3), value, np.uint8))
    writer.release()
    frames = _frames(f"{server}/remote.avi")
    assert [f.index for f in frames] == [0, 1]
    assert [int(f.image.mean().round()) for f in frames] == pytest.approx([40, 160], abs=4)


def _truncated_jpeg(path: Path) -> None:
    _ok, data = cv2.imencode(".jpg", _picture(5, 64, 64))
    path.write_bytes(data.tobytes()[: len(data) // 2])


def test_unreadable_files_are_reported_and_skipped_or_stop(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), _picture(0))
    _truncated_jpeg(tmp_path / "b.jpg")  # libjpeg alone would decode it, grey in its lower half
    (tmp_path / "c.png").write_bytes(b"\x89PNG not really")
    cv2.imwrite(str(tmp_path / "d.png"), _picture(1))
    (tmp_path / "e.mp4").write_bytes(b"not a video")
    skipped: list[tuple[str, str]] = []
    frames = _frames(tmp_path, report=lambda path, reason: skipped.append((path, reason)))
    assert [Path(f.path).name for f in frames] == ["a.png", "d.png"]
    assert [Path(p).name for p, _ in skipped] == ["b.jpg", "c.png", "e.mp4"]
    assert "truncated" in skipped[0][1]
    stream = iter_source(tmp_path, on_error="stop")
    assert Path(next(stream).path).name == "a.png"
    with pytest.raises(SourceError, match=r"b\.jpg") as caught:
        next(stream)
    assert isinstance(caught.value, ValueError) and caught.value.path == str(tmp_path / "b.jpg")


def test_a_complete_jpeg_with_bytes_after_its_end_marker_is_readable(tmp_path: Path) -> None:
    _ok, data = cv2.imencode(".jpg", _picture(6))
    (tmp_path / "tail.jpg").write_bytes(data.tobytes() + b"camera trailer")
    (frame,) = _frames(tmp_path / "tail.jpg", on_error="stop")
    assert np.array_equal(frame.image, cv2.imdecode(data, cv2.IMREAD_COLOR_RGB))


def test_missing_paths_and_empty_folders_name_the_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"source=.*nowhere\.jpg"):
        iter_source(tmp_path / "nowhere.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"source=.*empty.*no images"):
        iter_source(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="glob pattern matches no image"):
        iter_source(str(tmp_path / "*.png"))
    with pytest.raises(FileNotFoundError, match="source="):
        iter_source([_picture(), tmp_path / "nowhere.jpg"])  # checked before any frame is decoded


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), TypeError, "source: a numpy image must be uint8.*got dtype float32"),
        (np.zeros((4, 4, 2), np.uint8), ValueError, r"source: .*got shape \(4, 4, 2\)"),
        (np.zeros((2, 4, 4, 3), np.uint8), ValueError, r"source: .*got shape \(2, 4, 4, 3\)"),
        (torch.zeros(4, 4), ValueError, r"source: a tensor image must be .*got shape \(4, 4\)"),
        (torch.full((3, 4, 4), 2.0), ValueError, r"source: .*\[0, 1\].*\[2, 2\]"),
        (torch.zeros(3, 4, 4, dtype=torch.int32), TypeError, "source: .*got dtype torch.int32"),
        (12, TypeError, "source must be a path.*got int"),
        ([], ValueError, "source: got an empty list"),
        ("", ValueError, "source: got an empty string"),
    ],
)
def test_bad_in_memory_sources_name_the_argument(bad, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        iter_source(bad)


def test_on_error_must_be_skip_or_stop() -> None:
    with pytest.raises(ValueError, match="on_error must be 'skip' or 'stop', got 'raise'"):
        iter_source(_picture(), on_error="raise")
