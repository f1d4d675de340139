"""Uploaded bytes -> an RGB image tensor, refusing what is not a whole, allowed image.

The type is taken from the content, never from the file name or the declared content type:
Pillow identifies the format from the first bytes (``Image.open(..., formats=...)`` only
tries the allowed decoders), the pixel count is checked from the header before anything is
decoded (a 100 KB PNG can claim 50000 x 50000 pixels), and the full decode must succeed
(Pillow raises on truncated data where OpenCV would return a half-grey picture).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sightkit.serve.errors import ServeError

#: Pillow format names accepted, with the names used in messages.
ALLOWED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP"}
#: The signatures that open each allowed format, to tell a damaged image from a non-image.
SIGNATURES = {"JPEG": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",), "WEBP": (b"RIFF",), "BMP": (b"BM",)}


def describe_start(data: bytes) -> str:
    """The first bytes of ``data`` as text when they look like text, else as hex (for messages)."""
    head = data[:16]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return repr(head.decode("ascii"))
    return head.hex(" ") or "nothing (empty)"


def decode_image(
    data: bytes, name: str = "image", max_pixels: int = 40_000_000, max_aspect: float = float("inf")
) -> Tensor:
    """Decode an uploaded image to uint8 ``[3, H, W]`` RGB (pixels as stored; EXIF orientation
    is ignored, as in :func:`sightkit.data.coco.read_image`).

    Raises:
        ServeError: 415 ``unsupported_type`` when the content is not a JPEG, PNG, WebP or BMP
            image; 413 ``too_many_pixels`` when its header claims more than ``max_pixels``;
            400 ``damaged_image`` when it cannot be decoded completely (e.g. truncated).
    """
    *first, last = ALLOWED_FORMATS.values()
    allowed = f"{', '.join(first)} or {last}"
    if not data:
        raise ServeError(415, "unsupported_type", f"{name}: the upload is empty; send a {allowed} image")
    try:
        # Pillow warns (DecompressionBombWarning) or raises past its own pixel limit; ours is checked below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as error:
        raise ServeError(413, "too_many_pixels", f"{name}: {error}") from None
    except Exception:  # UnidentifiedImageError, or whatever a header parser hits on damaged bytes
        claimed = next((f for f, starts in SIGNATURES.items() if data.startswith(starts)), None)
        if claimed is not None:
            message = f"{name}: starts like a {ALLOWED_FORMATS[claimed]} image but its header is damaged"
            raise ServeError(400, "damaged_image", message) from None
        raise ServeError(
            415,
            "unsupported_type",
            f"{name}: the content is not a {allowed} image (it starts with {describe_start(data)}); "
            "the type is read from the bytes, not from the file name",
        ) from None
    width, height = picture.size
    if width * height > max_pixels:
        raise ServeError(
            413, "too_many_pixels", f"{name}: {width} x {height} pixels is more than the limit of {max_pixels} pixels"
        )
    if max(width, height) > max_aspect * min(width, height):
        raise ServeError(
            422,
            "extreme_aspect",
            f"{name}: {width} x {height} pixels; one side may be at most max_aspect={max_aspect:g} times the other",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture.load()
            array = to_rgb(picture)
    # Decoders of damaged data raise whatever their parsing hits (OSError, SyntaxError, struct.error,
    # IndexError, ...): any failure here is the upload's, never the server's.
    except Exception as error:
        raise ServeError(
            400,
            "damaged_image",
            f"{name}: the {ALLOWED_FORMATS.get(picture.format or '', 'image')} image cannot be decoded "
            f"({type(error).__name__}: {error})",
        ) from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_rgb(picture: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of a decoded image in any mode.

    Pillow's own conversion clips 16-bit grey ("I;16", "I") at 255, which turns a 16-bit PNG
    into a white picture; those keep their top 8 bits, as Pillow does for 16-bit colour PNGs.
    """
    if picture.mode.startswith("I"):
        grey = np.asarray(picture, dtype=np.int64).clip(0, 65535) >> 8
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    return np.array(picture.convert("RGB"))
