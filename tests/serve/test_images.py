"""decode_image: the type is read from the content; damaged, empty, foreign and huge images are
refused with the right status and a message that says why."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightkit.data.coco import read_image
from sightkit.serve.errors import ServeError
from sightkit.serve.images import decode_image


def encode(array: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
def test_lossless_formats_give_the_stored_pixels(pixels: np.ndarray, fmt: str) -> None:
    options = {"lossless": True} if fmt == "WEBP" else {}
    image = decode_image(encode(pixels, fmt, **options))
    assert image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))


def test_same_pixels_as_the_dataset_reader(pixels: np.ndarray, tmp_path: Path) -> None:
    """A JPEG decodes to what sightkit predict reads from the same file (OpenCV), within the
    rounding of the two libjpeg-turbo upsampling paths."""
    data = encode(pixels, "JPEG", quality=90)
    (tmp_path / "x.jpg").write_bytes(data)
    difference = (decode_image(data).int() - read_image(tmp_path / "x.jpg").as_subclass(torch.Tensor).int()).abs()
    assert difference.max() <= 2


def test_grey_and_alpha_images_become_rgb(pixels: np.ndarray) -> None:
    grey = pixels[..., 0]
    image = decode_image(encode(grey, "PNG"))
    assert torch.equal(image, torch.from_numpy(grey)[None].expand(3, -1, -1))
    rgba = np.concatenate([pixels, np.full((30, 40, 1), 7, np.uint8)], axis=2)
    assert torch.equal(decode_image(encode(rgba, "PNG")), torch.from_numpy(pixels).permute(2, 0, 1))


def test_text_named_like_an_image_is_unsupported() -> None:
    with pytest.raises(ServeError, match=r"cat\.jpg: the content is not a JPEG, PNG, WebP or BMP image") as caught:
        decode_image(b"this is a text file, not a picture\n", "cat.jpg")
    assert caught.value.status == 415 and caught.value.code == "unsupported_type"
    assert "it starts with 'this is a text f'" in caught.value.message


def test_allowed_types_only(pixels: np.ndarray) -> None:
    with pytest.raises(ServeError, match="not a JPEG, PNG, WebP or BMP image") as caught:
        decode_image(encode(pixels, "GIF"))
    assert caught.value.status == 415
    with pytest.raises(ServeError, match="the upload is empty") as caught:
        decode_image(b"")
    assert caught.value.status == 415


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_damaged(pixels: np.ndarray, fmt: str) -> None:
    data = encode(pixels, fmt)
    with pytest.raises(ServeError, match=f"the {fmt} image cannot be decoded .*truncated") as caught:
        decode_image(data[: len(data) // 2])
    assert caught.value.status == 400 and caught.value.code == "damaged_image"


def test_a_cut_header_is_damaged_not_foreign(pixels: np.ndarray) -> None:
    with pytest.raises(ServeError, match="starts like a PNG image but its header is damaged") as caught:
        decode_image(encode(pixels, "PNG")[:20])
    assert caught.value.status == 400


def test_pixel_limit_is_checked_from_the_header(pixels: np.ndarray) -> None:
    with pytest.raises(ServeError, match="40 x 30 pixels is more than the limit of 1199 pixels") as caught:
        decode_image(encode(pixels, "PNG"), max_pixels=1199)
    assert caught.value.status == 413 and caught.value.code == "too_many_pixels"
    assert decode_image(encode(pixels, "PNG"), max_pixels=1200).shape == (3, 30, 40)
