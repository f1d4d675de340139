"""Transforms keep boxes, masks and keypoints on the pixels they label."""

import pytest
import torch
from torchvision import tv_tensors

from sightkit.data import (
    COCO_KEYPOINT_NAMES,
    RandomHorizontalFlip,
    RandomSizeCrop,
    SanitizeInstances,
    detection_transforms,
    keypoint_flip_pairs,
)

COCO_PAIRS = keypoint_flip_pairs(COCO_KEYPOINT_NAMES)


def _sample(height: int = 7, width: int = 10) -> tuple[tv_tensors.Image, dict]:
    """A black image with one bright pixel at row 2, column 3, a box and a mask around a
    3x2 block, and one person whose left eye (keypoint 1) is on the bright pixel's centre."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[:, 2, 3] = 255
    mask = torch.zeros(1, height, width, dtype=torch.uint8)
    mask[0, 1:3, 1:4] = 1
    points = torch.zeros(1, 17, 2)
    points[0, 1] = torch.tensor([3.5, 2.5])
    points[0, 2] = torch.tensor([1.25, 1.5])
    visibility = torch.zeros(1, 17, dtype=torch.int64)
    visibility[0, 1], visibility[0, 2] = 2, 1
    target = {
        "boxes": tv_tensors.BoundingBoxes([[1.0, 1.0, 4.0, 3.0]], format="XYXY", canvas_size=(height, width)),
        "labels": torch.tensor([4]),
        "masks": tv_tensors.Mask(mask),
        "keypoints": tv_tensors.KeyPoints(points, canvas_size=(height, width)),
        "keypoints_visibility": visibility,
    }
    return tv_tensors.Image(image), target


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(torch.Tensor)


def test_flipped_keypoint_lands_on_the_flipped_pixel_and_pairs_swap() -> None:
    image, target = _sample()
    flipped_image, flipped = RandomHorizontalFlip(p=1.0, flip_pairs=COCO_PAIRS)(image, target)
    # The bright pixel moves from column 3 to column 10 - 1 - 3 = 6.
    assert flipped_image[0, 2, 6] == 255 and flipped_image.sum() == 3 * 255
    # The left eye on the bright pixel is now the right eye (slot 2), at x = 10 - 3.5 = 6.5.
    x, y = flipped["keypoints"][0, 2].tolist()
    assert (x, y) == (6.5, 2.5)
    assert flipped_image[0, int(y), int(x)] == 255
    assert flipped["keypoints"][0, 1].tolist() == [10 - 1.25, 1.5]
    assert flipped["keypoints_visibility"][0, :3].tolist() == [0, 1, 2]
    # The box [1, 1, 4, 3] becomes [6, 1, 9, 3], still the tight box of the flipped mask (columns 6..8).
    assert _plain(flipped["boxes"]).tolist() == [[6.0, 1.0, 9.0, 3.0]]
    cols = flipped["masks"][0].any(0).nonzero().flatten().tolist()
    assert cols == [6, 7, 8]
    assert flipped["labels"].tolist() == [4]


def test_flip_twice_is_identity_and_p0_does_nothing() -> None:
    image, target = _sample()
    flip = RandomHorizontalFlip(p=1.0, flip_pairs=COCO_PAIRS)
    back_image, back = flip(*flip(image, target))
    assert torch.equal(back_image, image)
    for key in ("boxes", "masks", "keypoints", "keypoints_visibility"):
        assert torch.equal(_plain(back[key]), _plain(target[key])), key
    same_image, same = RandomHorizontalFlip(p=0.0)(image, target)
    assert same_image is image and same is target


def test_flip_without_pairs_only_mirrors() -> None:
    image, target = _sample()
    _, flipped = RandomHorizontalFlip(p=1.0)(image, target)
    assert flipped["keypoints"][0, 1].tolist() == [6.5, 2.5]
    assert torch.equal(flipped["keypoints_visibility"], target["keypoints_visibility"])


def test_resize_by_two_keeps_box_tight_around_mask() -> None:
    image, target = _sample(20, 30)
    target["masks"] = tv_tensors.Mask(torch.zeros(1, 20, 30, dtype=torch.uint8))
    target["masks"][0, 2:6, 3:9] = 1
    target["boxes"] = tv_tensors.BoundingBoxes([[3.0, 2.0, 9.0, 6.0]], format="XYXY", canvas_size=(20, 30))
    out_image, out = detection_transforms("eval", size=40, max_size=100)(image, target)
    assert out_image.shape == (3, 40, 60) and out_image.dtype == torch.float32
    rows = out["masks"][0].any(1).nonzero().flatten()
    cols = out["masks"][0].any(0).nonzero().flatten()
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 11, 6, 17)
    assert _plain(out["boxes"]).tolist() == [[6.0, 4.0, 18.0, 12.0]]
    assert out["keypoints"][0, 1].tolist() == [7.0, 5.0]


def test_sanitize_drops_every_per_instance_entry_and_unlabels_outside_keypoints() -> None:
    canvas = (10, 10)
    points = torch.tensor([[[2.0, 3.0], [12.0, 1.0]], [[4.0, 4.0], [5.0, 5.0]], [[1.0, 1.0], [-0.5, 2.0]]])
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            [[0.0, 0.0, 5.0, 5.0], [3.0, 3.0, 3.5, 9.0], [1.0, 1.0, 12.0, 4.0]], format="XYXY", canvas_size=canvas
        ),
        "labels": torch.tensor([0, 1, 2]),
        "iscrowd": torch.tensor([0, 0, 1]),
        "masks": tv_tensors.Mask(torch.zeros(3, 10, 10, dtype=torch.uint8)),
        "keypoints": tv_tensors.KeyPoints(points, canvas_size=canvas),
        "keypoints_visibility": torch.tensor([[2, 2], [2, 2], [1, 2]]),
        "orig_size": torch.tensor([10, 10]),
        "image_id": 5,
    }
    image = tv_tensors.Image(torch.zeros(3, 10, 10))
    _, out = SanitizeInstances()(image, target)
    # The second box is 0.5 px wide; the third is clamped to [1, 1, 10, 4] and kept.
    assert _plain(out["boxes"]).tolist() == [[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 10.0, 4.0]]
    assert out["labels"].tolist() == [0, 2] and out["iscrowd"].tolist() == [0, 1]
    assert out["masks"].shape == (2, 10, 10) and isinstance(out["masks"], tv_tensors.Mask)
    assert isinstance(out["keypoints"], tv_tensors.KeyPoints)
    assert out["keypoints"].tolist() == [[[2.0, 3.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]]
    assert out["keypoints_visibility"].tolist() == [[2, 0], [1, 0]]
    assert out["orig_size"].tolist() == [10, 10] and out["image_id"] == 5


def _block_sample() -> tuple[tv_tensors.Image, dict]:
    """A 9x9 bright block on black (rows 20..28, columns 40..48 of 60x80) with its box,
    mask and a keypoint at its centre."""
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    image[:, 20:29, 40:49] = 255
    mask = torch.zeros(1, 60, 80, dtype=torch.uint8)
    mask[0, 20:29, 40:49] = 1
    points = torch.zeros(1, 17, 2)
    points[0, 0] = torch.tensor([44.5, 24.5])
    visibility = torch.zeros(1, 17, dtype=torch.int64)
    visibility[0, 0] = 2
    target = {
        "boxes": tv_tensors.BoundingBoxes([[40.0, 20.0, 49.0, 29.0]], format="XYXY", canvas_size=(60, 80)),
        "labels": torch.tensor([1]),
        "masks": tv_tensors.Mask(mask),
        "keypoints": tv_tensors.KeyPoints(points, canvas_size=(60, 80)),
        "keypoints_visibility": visibility,
    }
    return tv_tensors.Image(image), target


@pytest.mark.parametrize("seed", range(12))
def test_train_preset_keeps_labels_on_the_pixels(seed: int) -> None:
    torch.manual_seed(seed)
    transform = detection_transforms("train", size=48, max_size=96, flip_pairs=COCO_PAIRS, jitter=False)
    image, target = transform(*_block_sample())
    assert image.dtype == torch.float32 and image.min() >= 0.0 and image.max() <= 1.0
    height, width = image.shape[-2:]
    assert max(height, width) <= 96
    if target["boxes"].shape[0] == 0:  # the crop missed the block
        assert target["keypoints"].shape[0] == 0 and target["masks"].shape[0] == 0
        return
    x1, y1, x2, y2 = _plain(target["boxes"])[0].tolist()
    bright = image[0] > 0.5
    rows, cols = bright.any(1).nonzero().flatten(), bright.any(0).nonzero().flatten()
    # The box is the tight box of the bright block within one pixel (interpolation at its edges).
    assert abs(cols.min() - x1) <= 1 and abs(cols.max() + 1 - x2) <= 1
    assert abs(rows.min() - y1) <= 1 and abs(rows.max() + 1 - y2) <= 1
    if target["keypoints_visibility"][0, 0] > 0:
        x, y = target["keypoints"][0, 0].tolist()
        assert bright[int(y), int(x)]


def test_random_size_crop_window_and_alignment() -> None:
    for seed in range(10):
        torch.manual_seed(seed)
        image, target = RandomSizeCrop(10, 30)(*_sample(40, 50))
        height, width = image.shape[-2:]
        assert 10 <= height <= 30 and 10 <= width <= 30
        x, y = target["keypoints"][0, 1].tolist()
        if 0 <= x < width and 0 <= y < height:
            assert image[0, int(y), int(x)] == 255
        else:
            assert image.sum() == 0
    torch.manual_seed(0)
    image, _ = RandomSizeCrop(10, 30)(*_sample(5, 8))  # smaller than min_size: the whole image at most
    assert image.shape[-2:] == (5, 8)


def test_eval_preset_normalises_only_when_asked() -> None:
    image = tv_tensors.Image(torch.full((3, 4, 6), 255, dtype=torch.uint8))
    plain = detection_transforms("eval", size=4, max_size=10)(image)
    assert torch.equal(plain, torch.ones(3, 4, 6))
    normed = detection_transforms("eval", size=4, max_size=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))(image)
    assert normed[:, 0, 0].tolist() == [2.0, 1.0, 0.5]


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="p must be a probability in"):
        RandomHorizontalFlip(p=1.5)
    with pytest.raises(ValueError, match="need 1 <= min_size <= max_size"):
        RandomSizeCrop(30, 10)
    with pytest.raises(ValueError, match="split must be 'train' or 'eval', got 'test'"):
        detection_transforms("test")
    with pytest.raises(ValueError, match="need 1 <= size < max_size"):
        detection_transforms("eval", size=100, max_size=100)
    with pytest.raises(ValueError, match="mean and std must be given together"):
        detection_transforms("eval", mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="min_size must be > 0"):
        SanitizeInstances(0)
    image, target = _sample()
    with pytest.raises(ValueError, match=r"flip_pairs: pair \(1, 20\) is out of range for 17 keypoints"):
        RandomHorizontalFlip(p=1.0, flip_pairs=[(1, 20)])(image, target)
