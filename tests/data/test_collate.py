"""Padding collation: images at the top-left, mask True on padding, targets passed through."""

import functools
import pickle

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from sightkit.data import DetectionBatch, collate_detection


def _image(height: int, width: int, value: float) -> torch.Tensor:
    return torch.full((3, height, width), value)


def test_padding_and_mask() -> None:
    targets = [{"image_id": 1}, {"image_id": 2}]
    batch = collate_detection([(_image(2, 3, 1.0), targets[0]), (_image(4, 2, 2.0), targets[1])])
    assert batch.images.shape == (2, 3, 4, 3)
    expected_mask = torch.tensor(
        [
            [[0, 0, 0], [0, 0, 0], [1, 1, 1], [1, 1, 1]],
            [[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1]],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(batch.padding_mask, expected_mask)
    # Image pixels keep their value, padding is zero.
    assert torch.equal(batch.images[0, 0], torch.where(expected_mask[0], 0.0, 1.0))
    assert torch.equal(batch.images[1, 2], torch.where(expected_mask[1], 0.0, 2.0))
    assert batch.targets == targets and batch.targets[0] is targets[0]
    assert batch.image_sizes.tolist() == [[2, 3], [4, 2]]
    assert batch.skipped == 0


def test_size_divisible_rounds_up() -> None:
    batch = collate_detection([(_image(33, 5, 1.0), {}), (_image(2, 64, 1.0), {})], size_divisible=32)
    assert batch.images.shape == (2, 3, 64, 64)
    assert batch.padding_mask[0].sum() == 64 * 64 - 33 * 5
    assert batch.padding_mask[1].sum() == 64 * 64 - 2 * 64
    single = collate_detection([(_image(32, 32, 1.0), {})], size_divisible=32)
    assert single.images.shape == (1, 3, 32, 32) and not single.padding_mask.any()


def test_uint8_images_stay_uint8() -> None:
    batch = collate_detection([(torch.full((3, 1, 2), 7, dtype=torch.uint8), {})], size_divisible=4)
    assert batch.images.dtype == torch.uint8 and batch.images.sum() == 6 * 7


def test_skipped_samples_are_counted_and_an_all_bad_batch_is_empty() -> None:
    batch = collate_detection([None, (_image(2, 2, 1.0), {"a": 1}), None])
    assert batch.skipped == 2 and batch.images.shape == (1, 3, 2, 2)
    empty = collate_detection([None, None])
    assert empty.skipped == 2 and empty.images.shape[0] == 0 and empty.targets == []


@pytest.mark.parametrize("workers", [0, 1])
def test_works_in_a_data_loader(workers: int) -> None:
    samples = [(_image(h, 3, float(h)), {"h": h}) for h in (1, 2, 3, 4, 5)]
    collate = functools.partial(collate_detection, size_divisible=4)
    loader = DataLoader(samples, batch_size=2, num_workers=workers, collate_fn=collate)
    batches = list(loader)
    assert [b.images.shape[-2:] for b in batches] == [(4, 4), (4, 4), (8, 4)]
    assert [t["h"] for b in batches for t in b.targets] == [1, 2, 3, 4, 5]
    # A worker builds the batch in shared memory; padding must still be zero there.
    last = batches[2]
    assert torch.equal(last.images[0, 0], torch.where(last.padding_mask[0], 0.0, 5.0))


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="size_divisible must be >= 1, got 0"):
        collate_detection([], size_divisible=0)
    with pytest.raises(ValueError, match=r"batch\[0\] image must be a \[C, H, W\] tensor, got \(2, 2\)"):
        collate_detection([(torch.zeros(2, 2), {})])
    with pytest.raises(TypeError, match=r"batch\[0\] must be an \(image, target\) pair"):
        collate_detection([torch.zeros(3, 2, 2)])
    with pytest.raises(ValueError, match=r"batch\[1\] image is 1 channels of torch.float32, but batch\[0\] is 3"):
        collate_detection([(_image(2, 2, 0.0), {}), (torch.zeros(1, 2, 2), {})])


def _rich_target(n: int) -> dict:
    canvas = (6, 7)
    return {
        "boxes": tv_tensors.BoundingBoxes(torch.arange(4.0 * n).reshape(n, 4), format="XYXY", canvas_size=canvas),
        "labels": torch.arange(n),
        "masks": tv_tensors.Mask(torch.ones(n, 6, 7, dtype=torch.uint8)),
        "keypoints": tv_tensors.KeyPoints(torch.full((n, 5, 2), 1.5), canvas_size=canvas),
        "keypoints_visibility": torch.full((n, 5), 2),
        "orig_size": torch.tensor([6, 7]),
        "image_id": 40 + n,
    }


def _assert_same_targets(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in b:
            assert type(a[key]) is type(b[key]), key
            if isinstance(b[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key].as_subclass(torch.Tensor), b[key]), key
            else:
                assert a[key] == b[key]
        assert a["boxes"].canvas_size == (6, 7) and a["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
        assert a["keypoints"].canvas_size == (6, 7)


def test_pickled_batch_rebuilds_every_target_entry() -> None:
    targets = [_rich_target(2), _rich_target(0), _rich_target(1)]
    batch = collate_detection([(_image(6, 7, 1.0), t) for t in targets])
    again = pickle.loads(pickle.dumps(batch))
    assert isinstance(again, DetectionBatch)
    assert torch.equal(again.images, batch.images) and torch.equal(again.padding_mask, batch.padding_mask)
    assert torch.equal(again.image_sizes, batch.image_sizes) and again.skipped == batch.skipped
    _assert_same_targets(again.targets, targets)


def test_rich_targets_cross_worker_processes() -> None:
    samples = [(_image(6, 7, 1.0), _rich_target(n)) for n in (1, 3, 0, 2)]
    loader = DataLoader(samples, batch_size=2, num_workers=1, collate_fn=collate_detection)
    received = [t for batch in loader for t in batch.targets]
    _assert_same_targets(received, [t for _, t in samples])
