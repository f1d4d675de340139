"""Segmentation data: both layouts read back the masks as drawn, palette masks, the transforms
keep the mask on its pixels, collation pads with the ignore value, and bad files give errors
that name them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors

from sightkit.data import (
    SegmentationDataset,
    collate_segmentation,
    read_mask,
    segmentation_transforms,
    synthesize_shapes,
)
from sightkit.data.synthetic.shapes import SHAPE_CLASSES


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    synthesize_shapes(out=str(out), images=4, size=48, val_fraction=0.25, progress=False)
    return out


def _write_pairs(root: Path, split: str, masks: list[np.ndarray], classes: list[str], mode: str = "L") -> None:
    (root / "images" / split / "sub").mkdir(parents=True, exist_ok=True)
    (root / "masks" / split / "sub").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for i, mask in enumerate(masks):
        image = np.stack([mask * 40] * 3, axis=-1).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / split / "sub" / f"{i}.jpg")
        picture = Image.fromarray(mask.astype(np.uint8))
        if mode == "P":
            picture = picture.convert("P")
            picture.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))
        picture.save(root / "masks" / split / "sub" / f"{i}.png")


def test_shapes_layout_reads_the_generator_masks(shapes: Path) -> None:
    train = SegmentationDataset(shapes, "train")
    val = SegmentationDataset(shapes, "val")
    assert (len(train), len(val)) == (3, 1)
    assert train.classes == ["background", *SHAPE_CLASSES]
    for dataset in (train, val):
        for index in range(len(dataset)):
            image, target = dataset[index]
            stored = np.array(Image.open(shapes / "masks" / f"{dataset.image_path(index).stem}.png"))
            # Category ids 1..5 are labels 1..5, background stays 0.
            assert target["mask"].tolist() == stored.tolist()
            assert image.shape[-2:] == target["mask"].shape
            assert target["orig_size"].tolist() == list(stored.shape)
            assert 0 < (stored > 0).sum() < stored.size


def test_folder_layout_with_palette_masks(tmp_path: Path) -> None:
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:6, 3:9] = 2
    mask[7:, :4] = 1
    mask[0, 0] = 255
    _write_pairs(tmp_path, "train", [mask, mask.T.copy()], ["background", "road", "car"], mode="P")
    dataset = SegmentationDataset(tmp_path, "train")
    assert dataset.classes == ["background", "road", "car"] and len(dataset) == 2
    assert read_mask(tmp_path / "masks" / "train" / "sub" / "0.png").tolist() == mask.tolist()
    _, target = dataset[0]
    assert target["mask"].tolist() == mask.tolist()
    assert dataset[1][1]["mask"].tolist() == mask.T.tolist()


def test_keep_original_keeps_the_untransformed_mask(shapes: Path) -> None:
    dataset = SegmentationDataset(shapes, "val", segmentation_transforms("eval", size=24), keep_original=True)
    image, target = dataset[0]
    assert min(image.shape[-2:]) == 24 and target["mask"].shape == image.shape[-2:]
    assert torch.equal(target["orig_mask"], dataset.labels(0))


def test_train_transforms_keep_the_mask_on_its_pixels() -> None:
    # Blocks of 16 x 16 pixels whose grey level is 40 x their class: after random resizing,
    # flipping and cropping, the mask must still name the class the pixels show, wherever
    # the 3 x 3 neighbourhood holds one class (resampling blurs the block edges).
    generator = np.random.default_rng(0)
    blocks = generator.integers(0, 4, (6, 8))
    mask = np.kron(blocks, np.ones((16, 16), dtype=np.int64))
    image = tv_tensors.Image(torch.from_numpy(mask * 40).to(torch.uint8).expand(3, -1, -1).clone())
    transforms = segmentation_transforms("train", size=64, scale_range=(0.75, 1.5), jitter=False)
    torch.manual_seed(1)
    padded_seen = False
    for _ in range(10):
        out, target = transforms(image, {"mask": tv_tensors.Mask(torch.from_numpy(mask))})
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32
        labels = target["mask"].as_subclass(torch.Tensor)
        valid = labels != 255
        padded_seen |= bool((~valid).any())
        as_float = labels[None, None].float()
        uniform = F.max_pool2d(as_float, 3, 1, 1) == -F.max_pool2d(-as_float, 3, 1, 1)
        interior = uniform[0, 0] & valid
        shown = (out[0] * 255 / 40).round().long()
        assert interior.sum() > 100
        assert torch.equal(shown[interior], labels[interior])
        assert torch.equal(out[:, ~valid], torch.zeros(3, int((~valid).sum())))
    assert padded_seen  # shorter sides below 64 pad the crop with ignore_index


def test_collate_pads_masks_with_the_ignore_value() -> None:
    samples = [
        (torch.ones(3, 5, 7), {"mask": torch.full((5, 7), 1), "orig_mask": torch.zeros(9, 9, dtype=torch.int64)}),
        (torch.ones(3, 8, 4), {"mask": torch.full((8, 4), 2), "orig_mask": torch.zeros(3, 3, dtype=torch.int64)}),
    ]
    batch = collate_segmentation(samples, size_divisible=4)
    assert batch.images.shape == (2, 3, 8, 8) and batch.masks.shape == (2, 8, 8)
    assert batch.image_sizes.tolist() == [[5, 7], [8, 4]]
    assert (
        (batch.masks[0, :5, :7] == 1).all()
        and (batch.masks[0, 5:] == 255).all()
        and (batch.masks[0, :, 7] == 255).all()
    )
    assert (batch.masks[1, :, :4] == 2).all() and (batch.masks[1, :, 4:] == 255).all()
    assert batch.images[0, :, :5, :7].eq(1).all() and batch.images[0, :, 5:].eq(0).all()
    assert [m.shape for m in batch.orig_masks] == [(9, 9), (3, 3)]


def test_errors_name_the_file(tmp_path: Path, shapes: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder; make one with `sightkit data synth shapes"):
        SegmentationDataset(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match=r"no split 'test' in .*neither .*test.json nor .*images/test/ exists"):
        SegmentationDataset(shapes, "test")
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[0, :3] = 7
    _write_pairs(tmp_path, "train", [mask], ["background", "thing"])
    with pytest.raises(ValueError, match=r"mask .*0.png has values \[7\] that are neither a class \(0..1\)"):
        SegmentationDataset(tmp_path, "train")[0]
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"classes\.txt is missing"):
        SegmentationDataset(tmp_path, "train")
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(ValueError, match=r"must be an 8-bit one-channel PNG of class indices .* got mode RGB"):
        read_mask(rgb)
    with pytest.raises(ValueError, match="ignore_index=1 is a class index"):
        SegmentationDataset(shapes, "train", ignore_index=1)
    with pytest.raises(ValueError, match=r"scale_range must be \(low, high\)"):
        segmentation_transforms(scale_range=(2.0, 1.0))
