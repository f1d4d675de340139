"""Every kind of ``source`` a predictor takes, as one stream of RGB frames.

:func:`iter_source` turns a file, a folder, a glob pattern, a list, a PIL image, a numpy
array, a torch tensor, a video file or an http(s) URL into :class:`Frame` objects (uint8
``[H, W, 3]`` RGB, with the path and, for videos, the frame number). Files are decoded with
:func:`sightkit.data.coco.read_image` (the reader training uses, so a picture predicts as it
trains: pixels as stored, EXIF orientation ignored); videos are streamed frame by frame
with ``cv2.VideoCapture`` in constant memory. Arguments are checked when
:func:`iter_source` is called (a missing path, an empty folder, an array of the wrong
dtype); images are decoded lazily, and one that cannot be read is reported and skipped
(``on_error="skip"``) or stops the stream with :class:`SourceError` (``on_error="stop"``).
"""

from __future__ import annotations

import glob
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cv2
import numpy as np
import torch

from sightkit._api import export
from sightkit.data.coco import ImageReadError, _pixel_limit, image_problem, read_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
URL_TIMEOUT = 30.0
"""Seconds an http(s) image may take to answer before it counts as unreadable."""


@export("data.Frame")
@dataclass
class Frame:
    """One image of a source.

    Attributes:
        image: uint8 ``[H, W, 3]`` RGB, C-contiguous.
        path: the file or URL it came from; for an in-memory image ``"image<i>"``, ``i``
            its position in the source (a name for saved pictures).
        index: the frame number (from 0) in a video, ``None`` for a still image.
    """

    image: np.ndarray
    path: str
    index: int | None = None


@export("data.SourceError")
class SourceError(ValueError):
    """An image or video of a source that cannot be read (corrupt, truncated, not an image,
    an URL that does not answer); ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read {path!r}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class _Item:
    """One entry of an expanded source: a file, a URL, or an in-memory image."""

    kind: str  # "image", "video", "url", "memory"
    path: str
    value: Any = None


@export("data.iter_source")
def iter_source(
    source: Any,
    on_error: str = "skip",
    report: Callable[[str, str], None] | None = None,
    *,
    timeout: float = URL_TIMEOUT,
    max_pixels: int | None = None,
) -> Iterator[Frame]:
    """Stream the images of ``source`` as :class:`Frame` objects (uint8 ``[H, W, 3]`` RGB).

    Args:
        source: one of, or a list/tuple of any of:

            - an image file (``str`` or ``Path``);
            - a folder: every image and video under it, recursively, sorted by path;
            - a glob pattern (``"photos/*.jpg"``, ``**`` recurses);
            - a video file (``.mp4 .avi .mov .mkv .webm .m4v``): every frame, streamed;
            - an ``http://`` or ``https://`` URL of an image (fetched with a ``timeout``) or
              of a video (streamed by OpenCV when its path ends in a video suffix);
            - a PIL image (any mode, converted to RGB);
            - a numpy array: uint8 ``[H, W, 3]`` RGB (the documented layout), ``[H, W]``
              grayscale or ``[H, W, 4]`` RGBA (alpha dropped);
            - a torch tensor ``[3, H, W]`` or ``[B, 3, H, W]`` (also 1 or 4 channels), uint8
              or floating point in ``[0, 1]``; a batch gives ``B`` frames.
        on_error: ``"skip"``: a file, video or URL that cannot be read is passed to
            ``report`` and skipped; ``"stop"``: it raises :class:`SourceError`.
        report: called as ``report(path, reason)`` for each skipped input; by default a
            warning is logged.
        timeout: seconds an image URL may take to answer.
        max_pixels: an image file or URL of more pixels is unreadable (``on_error``), found from
            its header before decoding; ``None``: Pillow's limit; 0: none (see
            :func:`~sightkit.data.coco.read_image`).

    Raises:
        FileNotFoundError: a path that does not exist, a folder or glob with no images.
        TypeError, ValueError: an in-memory image of an unsupported type, dtype or shape,
            an empty list, or an invalid ``on_error``.
    """
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    _pixel_limit(max_pixels)  # a bad limit is an error at once, not one per file
    items = _expand(source)
    return _stream(items, on_error, report or _log_skipped, timeout, max_pixels)


@export("data.count_source")
def count_source(source: Any) -> int | None:
    """The number of frames :func:`iter_source` will give for ``source`` when it is cheap to
    know (videos from their container's frame count, which some formats only estimate);
    ``None`` when it is not (a video URL, a video whose container does not say).
    Unreadable files are counted (they are only found when decoded)."""
    total = 0
    for item in _expand(source):
        if item.kind == "video" or (item.kind == "url" and _is_video(item.path)):
            if item.kind == "url":
                return None
            capture = cv2.VideoCapture(item.path)
            frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
            capture.release()
            if frames <= 0:
                return None
            total += frames
        else:
            total += 1
    return total


# --------------------------------------------------------------------------- expansion


def _expand(source: Any) -> list[_Item]:
    """Check ``source`` and list what it holds (folders and globs resolved), without decoding."""
    items: list[_Item] = []
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("source: got an empty list; expected images, paths, URLs, arrays or tensors")
        for position, entry in enumerate(source):
            if isinstance(entry, (list, tuple)):
                raise TypeError(f"source: a list may not nest lists; element {position} is a {type(entry).__name__}")
            items.extend(_expand_one(entry, position))
        return items
    return _expand_one(source, 0)


def _expand_one(source: Any, position: int) -> list[_Item]:
    if isinstance(source, (str, Path)):
        return _expand_path(source)
    name = f"image{position}"
    if isinstance(source, torch.Tensor):
        images = _check_tensor(source)
        if source.ndim == 4:
            return [_Item("memory", f"image{position}_{b}", image) for b, image in enumerate(images)]
        return [_Item("memory", name, images[0])]
    if isinstance(source, np.ndarray):
        return [_Item("memory", name, _check_array(source))]
    from PIL import Image

    if isinstance(source, Image.Image):
        return [_Item("memory", name, source)]
    raise TypeError(
        "source must be a path, folder, glob, URL, PIL image, numpy array, torch tensor or a list of these; "
        f"got {type(source).__name__}"
    )


def _expand_path(source: str | Path) -> list[_Item]:
    text = str(source)
    if not text:
        raise ValueError("source: got an empty string; expected an image, a folder, a glob, a video or a URL")
    if isinstance(source, str) and text.lower().startswith(("http://", "https://")):
        return [_Item("url", text)]
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        if not files:
            raise FileNotFoundError(
                f"source={text!r} is a folder with no images or videos ({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})"
            )
        return [_file_item(p) for p in files]
    if path.is_file():
        return [_file_item(path)]
    if isinstance(source, str) and glob.has_magic(text):
        files = sorted(
            Path(p)
            for p in glob.glob(text, recursive=True)
            if Path(p).is_file() and _suffix(Path(p)) in IMAGE_SUFFIXES + VIDEO_SUFFIXES
        )
        if not files:
            raise FileNotFoundError(f"source={text!r}: the glob pattern matches no image or video")
        return [_file_item(p) for p in files]
    raise FileNotFoundError(f"source={text!r} does not exist (expected an image, a folder, a glob, a video or a URL)")


def _file_item(path: Path) -> _Item:
    return _Item("video" if _suffix(path) in VIDEO_SUFFIXES else "image", str(path))


def _suffix(path: Path | str) -> str:
    return Path(path).suffix.lower()


def _is_video(url: str) -> bool:
    return _suffix(urlparse(url).path) in VIDEO_SUFFIXES


def _check_array(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise TypeError(
            f"source: a numpy image must be uint8 (H, W, 3) RGB, (H, W) grayscale or (H, W, 4) RGBA; "
            f"got dtype {array.dtype} (convert with (x * 255).round().astype(np.uint8) for [0, 1] floats)"
        )
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))) or 0 in array.shape[:2]:
        raise ValueError(
            f"source: a numpy image must be (H, W, 3) RGB, (H, W) grayscale or (H, W, 4) RGBA uint8; "
            f"got shape {tuple(array.shape)}"
        )
    return array


def _check_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Check a ``[C, H, W]`` or ``[B, C, H, W]`` tensor; return it as uint8 ``[B, H, W, C]`` on the CPU."""
    if tensor.ndim not in (3, 4) or tensor.shape[-3] not in (1, 3, 4) or 0 in tensor.shape[-2:]:
        raise ValueError(
            f"source: a tensor image must be [C, H, W] or [B, C, H, W] with C in (1, 3, 4); got shape "
            f"{tuple(tensor.shape)}"
        )
    tensor = tensor.detach().cpu()
    if tensor.dtype.is_floating_point:
        if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
            raise ValueError(
                f"source: a floating-point tensor image must hold values in [0, 1]; got values in "
                f"[{tensor.min().item():g}, {tensor.max().item():g}] (pass uint8 for 0..255)"
            )
        tensor = (tensor.float() * 255).round().to(torch.uint8)
    elif tensor.dtype != torch.uint8:
        raise TypeError(f"source: a tensor image must be uint8 or floating point in [0, 1]; got dtype {tensor.dtype}")
    batch = tensor if tensor.ndim == 4 else tensor.unsqueeze(0)
    return batch.permute(0, 2, 3, 1)


# --------------------------------------------------------------------------- decoding


def _stream(
    items: Sequence[_Item], on_error: str, report: Callable[[str, str], None], timeout: float, max_pixels: int | None
) -> Iterator[Frame]:
    for item in items:
        try:
            if item.kind == "video" or (item.kind == "url" and _is_video(item.path)):
                yield from _video_frames(item.path)
            elif item.kind == "url":
                yield Frame(_decode_bytes(_fetch(item.path, timeout), item.path, max_pixels), item.path)
            elif item.kind == "image":
                yield Frame(read_image_array(item.path, max_pixels), item.path)
            else:
                yield Frame(_to_rgb(item.value), item.path)
        except SourceError as error:
            if on_error == "stop":
                raise
            report(error.path, error.reason)


def _log_skipped(path: str, reason: str) -> None:
    logger.warning("skipping %s: %s", path, reason)


@export("data.read_image_array")
def read_image_array(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as uint8 ``[H, W, 3]`` RGB with :func:`~sightkit.data.coco.read_image`
    (truncated JPEG and PNG files and images of more than ``max_pixels`` pixels are refused,
    not decoded half grey).

    Raises:
        SourceError: the file is not a readable image.
    """
    try:
        return read_image(path, max_pixels=max_pixels).permute(1, 2, 0).numpy()
    except ImageReadError as error:
        raise SourceError(str(path), _reason(error, path)) from None


def _reason(error: ImageReadError, path: str | Path) -> str:
    return str(error).removeprefix(f"cannot use image {str(path)!r}: ")


def _fetch(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        raise SourceError(url, f"HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise SourceError(url, f"could not fetch it ({getattr(error, 'reason', error)})") from None


def _decode_bytes(data: bytes, path: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode an encoded image with the checks and decoders of :func:`~sightkit.data.coco.read_image`."""
    header = image_problem(data, _pixel_limit(max_pixels))
    if isinstance(header, str):
        raise SourceError(path, header)
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is not None:
        return array
    if header is None:
        raise SourceError(path, "not a readable image (neither OpenCV nor Pillow knows its format)")
    try:
        with header:
            return np.array(header.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise SourceError(path, f"not a readable image ({error})") from None


def _video_frames(path: str) -> Iterator[Frame]:
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise SourceError(path, "OpenCV cannot open it as a video")
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), path, index)
            index += 1
        if index == 0:
            raise SourceError(path, "the video has no readable frame")
    finally:
        capture.release()


def _to_rgb(value: Any) -> np.ndarray:
    """An in-memory image (checked by ``_expand``) as a C-contiguous uint8 ``[H, W, 3]`` RGB array."""
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    elif not isinstance(value, np.ndarray):  # a PIL image
        return np.asarray(value.convert("RGB")).copy()
    if value.ndim == 2:
        value = value[..., None]
    if value.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(value, 3, axis=2))
    return np.ascontiguousarray(value[..., :3])
