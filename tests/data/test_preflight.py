"""Reading images safely: truncated JPEG/PNG and oversized images are refused by read_image and
found by the pre-flight check without decoding; which file each sample of a dataset reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bad_images import cut, noise, write_bomb_png, write_jpeg, write_png
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from sightkit.data import DEFAULT_MAX_PIXELS, ImageReadError, check_images, read_image, sample_image_paths


def test_default_limit_is_pillows() -> None:
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485


def test_complete_files_read_as_pillow_decodes_them(tmp_path) -> None:
    png = write_png(tmp_path / "a.png")
    assert np.array_equal(read_image(png).permute(1, 2, 0).numpy(), noise(48, 64))
    jpeg = write_jpeg(tmp_path / "a.jpg")
    decoded = read_image(jpeg).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(decoded - np.asarray(Image.open(jpeg).convert("RGB")).astype(int)).max() <= 2
    assert check_images([png, jpeg]) == {}


@pytest.mark.parametrize("options", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_truncated_jpeg_is_refused(tmp_path, options) -> None:
    # Today's decoders fill the missing rows with grey and only print "Premature end of JPEG file".
    path = cut(write_jpeg(tmp_path / "cut.jpg", 96, 128, **options), 0.6)
    with pytest.raises(ImageReadError, match=r"cut\.jpg'.*truncated JPEG: the end-of-image marker is missing"):
        read_image(path)
    reason = "truncated JPEG: the end-of-image marker is missing (the file was cut short)"
    assert check_images([path]) == {str(path): reason}


def test_end_marker_inside_a_header_segment_does_not_hide_truncation(tmp_path) -> None:
    # An EXIF thumbnail is a whole JPEG, FF D9 included, inside an APP1 segment before the image data.
    data = write_jpeg(tmp_path / "a.jpg").read_bytes()
    thumbnail = write_jpeg(tmp_path / "thumb.jpg", 8, 8).read_bytes()
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    whole = data[:2] + app1 + data[2:]
    complete = tmp_path / "exif.jpg"
    complete.write_bytes(whole)
    assert tuple(read_image(complete).shape) == (3, 48, 64)
    cut_path = tmp_path / "exif_cut.jpg"
    cut_path.write_bytes(whole[: len(whole) - 200])
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        read_image(cut_path)


def test_bytes_after_the_end_marker_are_allowed(tmp_path) -> None:
    # Some cameras append their own data after the image; decoders ignore it.
    path = write_jpeg(tmp_path / "trailer.jpg")
    path.write_bytes(path.read_bytes() + b"SEFT" + bytes(100))
    assert tuple(read_image(path).shape) == (3, 48, 64)
    assert check_images([path]) == {}


def test_truncated_png_is_refused(tmp_path) -> None:
    path = cut(write_png(tmp_path / "cut.png"), 0.6)
    with pytest.raises(ImageReadError, match=r"cut\.png'.*truncated PNG"):
        read_image(path)


def test_pixel_limit_refuses_a_small_file_with_many_pixels_before_decoding(tmp_path) -> None:
    bomb = write_bomb_png(tmp_path / "bomb.png", 10_000, 9_000)
    assert bomb.stat().st_size < 500_000
    expected = "it has 10000x9000 = 90,000,000 pixels, more than max_pixels=89,478,485"
    with pytest.raises(ImageReadError, match=rf"bomb\.png'.*{expected}"):
        read_image(bomb)
    small = write_png(tmp_path / "small.png", 50, 100)
    with pytest.raises(ImageReadError, match=r"50 = 5,000 pixels, more than max_pixels=4,999"):
        read_image(small, max_pixels=4_999)
    assert tuple(read_image(small, max_pixels=5_000).shape) == (3, 50, 100)
    assert tuple(read_image(write_bomb_png(tmp_path / "wide.png", 3000, 2), max_pixels=0).shape) == (3, 2, 3000)
    with pytest.raises(ValueError, match=r"max_pixels must be an integer >= 0 \(0: no limit\), got -1"):
        read_image(small, max_pixels=-1)


def test_check_images_names_every_bad_file_once(tmp_path) -> None:
    good = write_jpeg(tmp_path / "good.jpg", 30, 40)
    truncated = cut(write_jpeg(tmp_path / "cut.jpg", 30, 40))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = write_png(tmp_path / "big.png", 40, 50)
    problems = check_images([good, truncated, tmp_path / "missing.jpg", empty, text, big, truncated], max_pixels=1999)
    assert problems == {
        str(truncated): "truncated JPEG: the end-of-image marker is missing (the file was cut short)",
        str(tmp_path / "missing.jpg"): "no such file",
        str(empty): "the file is empty (0 bytes)",
        str(text): "no image decoder recognises it (corrupt, cut short inside its header, or not an image)",
        str(big): "it has 50x40 = 2,000 pixels, more than max_pixels=1,999 (raise max_pixels= to read it, or resize "
        "it)",
    }
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)


class _Files(Dataset):
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> str:
        return self.names[index]

    def image_path(self, index: int) -> Path:
        return Path(self.names[index])


def test_sample_image_paths_through_subsets_and_concatenations() -> None:
    a, b = _Files(["a0", "a1", "a2"]), _Files(["b0"])
    assert sample_image_paths(Subset(ConcatDataset([a, b]), [3, 0])) == [Path("b0"), Path("a0")]
    expected = [Path(p) for p in ("a0", "a1", "a2", "b0", "b0")]
    assert sample_image_paths(ConcatDataset([a, Subset(b, [0, 0])])) == expected
    assert sample_image_paths(ConcatDataset([a, [1, 2]])) is None  # a part that does not say
