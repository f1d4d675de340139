"""Broken image files for the data-reading and pre-flight tests: truncated JPEGs and PNGs, a
20000 x 20000 PNG of a few hundred bytes (a decompression bomb), empty and non-image files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_jpeg(path: Path, height: int = 48, width: int = 64, seed: int = 0, **options) -> Path:
    Image.fromarray(noise(height, width, seed)).save(path, format="JPEG", quality=90, **options)
    return path


def write_png(path: Path, height: int = 48, width: int = 64, seed: int = 0) -> Path:
    Image.fromarray(noise(height, width, seed)).save(path, format="PNG")
    return path


def cut(path: Path, fraction: float = 0.6) -> Path:
    """Keep the first ``fraction`` of the file's bytes, as an interrupted copy does."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A complete PNG of ``width x height`` black pixels: every row is a filter byte and
    zeros, which deflate squeezes to almost nothing (20000 x 20000 gives about 400 KB, as in the issue)."""
    compressor, parts = zlib.compressobj(1), []
    row = bytes(width + 1)
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )
    return path
