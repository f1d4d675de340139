"""COCO datasets: hand-written JSON files with known answers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from sightkit.data import (
    COCO_KEYPOINT_NAMES,
    FACE_LANDMARK_NAMES,
    CategoryMap,
    CocoDetection,
    CocoKeypoints,
    ImageReadError,
    collate_detection,
    decode_masks,
    keypoint_flip_pairs,
    keypoints_xyv,
    read_image,
)

CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 40, "name": "bird"}]


def _write_image(path: Path, height: int, width: int, value: int = 0) -> None:
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)


def _annotation(ann_id: int, image_id: int, category_id: int, bbox: list[float], **extra: object) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": 1.0, **extra}


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    _write_image(tmp_path / "a.png", 20, 30)
    _write_image(tmp_path / "b.png", 10, 12)
    data = {
        "images": [
            {"id": 11, "file_name": "a.png", "height": 20, "width": 30},
            {"id": 12, "file_name": "b.png", "height": 10, "width": 12},
        ],
        "categories": CATEGORIES,
        "annotations": [
            _annotation(1, 11, 40, [1, 2, 3, 4], segmentation=[[1, 2, 4, 2, 4, 6, 1, 6]]),
            _annotation(2, 11, 2, [25, 15, 10, 10], segmentation={"size": [20, 30], "counts": [0, 600]}),
            _annotation(3, 11, 7, [0, 0, 30, 20], iscrowd=1, segmentation={"size": [20, 30], "counts": [0, 600]}),
            _annotation(4, 11, 7, [5, 5, 0, 3], segmentation=[[5, 5, 5, 5, 5, 8]]),  # zero width: dropped
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path


def test_detection_target_values(coco_dir: Path) -> None:
    dataset = CocoDetection(coco_dir, coco_dir / "ann.json")
    assert len(dataset) == 2
    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    # xywh -> xyxy; the second box [25, 15, 35, 25] is clamped to the 30x20 image.
    assert torch.equal(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[1.0, 2, 4, 6], [25, 15, 30, 20]]))
    assert target["boxes"].canvas_size == (20, 30)
    # ids sorted: 2 -> 0, 7 -> 1, 40 -> 2
    assert target["labels"].tolist() == [2, 0]
    assert target["iscrowd"].tolist() == [0, 0]
    assert target["image_id"] == 11
    assert target["orig_size"].tolist() == [20, 30]


def test_image_without_annotations_is_kept(coco_dir: Path) -> None:
    _, target = CocoDetection(coco_dir, coco_dir / "ann.json")[1]
    assert target["image_id"] == 12
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_crowd_left_out_unless_asked(coco_dir: Path) -> None:
    _, target = CocoDetection(coco_dir, coco_dir / "ann.json", include_crowd=True)[0]
    assert target["iscrowd"].tolist() == [0, 0, 1]
    assert target["labels"].tolist() == [2, 0, 1]


def test_masks_from_polygon_and_uncompressed_rle(coco_dir: Path) -> None:
    _, target = CocoDetection(coco_dir, coco_dir / "ann.json", masks=True)[0]
    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.shape == (2, 20, 30)
    # The uncompressed RLE [0, 600] is all ones (column-major runs: 0 zeros, 600 ones).
    assert masks[1].all()
    # The polygon [1, 4] x [2, 6] holds the pixel centres (j + 0.5, i + 0.5) of columns 1..3 and rows 2..5.
    expected = torch.zeros(20, 30, dtype=torch.uint8)
    expected[2:6, 1:4] = 1
    assert torch.equal(masks[0].as_subclass(torch.Tensor), expected)


def test_decode_masks_compressed_rle_round_trip() -> None:
    from faster_coco_eval.core import mask as coco_mask

    mask = np.zeros((6, 5), dtype=np.uint8)
    mask[1:4, 2:5] = 1
    rle = coco_mask.encode(np.asfortranarray(mask[..., None]))[0]
    rle["counts"] = rle["counts"].decode("ascii")
    decoded = decode_masks([rle], 6, 5)
    assert torch.equal(decoded[0], torch.from_numpy(mask))
    assert decode_masks([], 6, 5).shape == (0, 6, 5)
    with pytest.raises(ValueError, match="segmentation must be a polygon list or an RLE dict"):
        decode_masks([42], 6, 5)


def test_masks_require_segmentation(tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png", 4, 4)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
        "categories": CATEGORIES,
        "annotations": [_annotation(9, 1, 2, [0, 0, 2, 2])],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="annotation id 9 has no segmentation"):
        CocoDetection(tmp_path, tmp_path / "a.json", masks=True)


def test_category_map_round_trip() -> None:
    categories = CategoryMap.from_coco(CATEGORIES)
    assert categories.category_ids == (2, 7, 40) and categories.names == ("cat", "dog", "bird")
    labels = categories.to_labels([40, 2, 7, 7])
    assert labels.tolist() == [2, 0, 1, 1]
    assert categories.to_category_ids(labels).tolist() == [40, 2, 7, 7]
    assert categories.to_category_ids(torch.empty(0, dtype=torch.int64)).shape == (0,)
    with pytest.raises(ValueError, match=r"unknown ids \[3\]"):
        categories.to_labels([3, 2])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        categories.to_category_ids([3])
    with pytest.raises(ValueError, match="duplicate category ids"):
        CategoryMap.from_coco([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (_annotation(5, 99, 2, [0, 0, 1, 1]), "annotation id 5 refers to unknown image_id 99"),
        (_annotation(6, 1, 3, [0, 0, 1, 1]), "annotation id 6 has unknown category_id 3"),
        ({"id": 7, "image_id": 1, "category_id": 2}, "annotation id 7 needs image_id, category_id and bbox"),
    ],
)
def test_bad_annotation_is_named(tmp_path: Path, annotation: dict, message: str) -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
        "categories": CATEGORIES,
        "annotations": [annotation],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        CocoDetection(tmp_path, tmp_path / "a.json")


def test_missing_or_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CocoDetection(tmp_path, tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        CocoDetection(tmp_path, tmp_path / "x.json")
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', got 'ignore'"):
        CocoDetection(tmp_path, tmp_path / "x.json", on_error="ignore")


def test_corrupt_missing_and_wrong_size_images_name_their_path(coco_dir: Path) -> None:
    (coco_dir / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 20)
    dataset = CocoDetection(coco_dir, coco_dir / "ann.json")
    with pytest.raises(ImageReadError, match=r"a\.png") as info:
        dataset[0]
    assert info.value.path == str(coco_dir / "a.png")
    (coco_dir / "b.png").unlink()
    with pytest.raises(ImageReadError, match=r"b\.png.*no such file"):
        dataset[1]
    _write_image(coco_dir / "b.png", 11, 12)
    with pytest.raises(ImageReadError, match=r"b\.png.*11x12.*says 10x12"):
        dataset[1]


def test_skip_mode_counts_bad_samples_and_collate_drops_them(coco_dir: Path) -> None:
    (coco_dir / "a.png").write_bytes(b"not an image")
    dataset = CocoDetection(coco_dir, coco_dir / "ann.json", on_error="skip")
    assert dataset[0] is None and dataset.skipped == 1
    batch = collate_detection([dataset[0], dataset[1]])
    assert batch.skipped == 1 and len(batch.targets) == 1 and batch.targets[0]["image_id"] == 12
    assert dataset.skipped == 2


def test_datasets_pass_max_pixels_to_read_image(coco_dir: Path) -> None:
    # a.png is 20x30 = 600 pixels, b.png 10x12 = 120.
    dataset = CocoDetection(coco_dir, coco_dir / "ann.json", max_pixels=599)
    with pytest.raises(ImageReadError, match=r"a\.png'.*30x20 = 600 pixels, more than max_pixels=599"):
        dataset[0]
    assert tuple(dataset[1][0].shape) == (3, 10, 12)
    skipping = CocoDetection(coco_dir, coco_dir / "ann.json", max_pixels=599, on_error="skip")
    assert skipping[0] is None and skipping.skipped == 1


def test_truncated_png_in_a_dataset_is_an_error_not_grey_pixels(coco_dir: Path) -> None:
    data = (coco_dir / "a.png").read_bytes()
    (coco_dir / "a.png").write_bytes(data[:-12])  # cut short, if only by its final IEND chunk
    with pytest.raises(ImageReadError, match=r"a\.png'.*truncated PNG"):
        CocoDetection(coco_dir, coco_dir / "ann.json")[0]


def test_read_image_reads_bmp_and_gif(tmp_path: Path) -> None:
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    expected = torch.from_numpy(pixels).permute(2, 0, 1)
    Image.fromarray(pixels).save(tmp_path / "x.bmp")
    assert torch.equal(read_image(tmp_path / "x.bmp").as_subclass(torch.Tensor), expected)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "x.gif")  # one channel: the palette holds the grey values
    assert torch.equal(read_image(tmp_path / "x.gif").as_subclass(torch.Tensor), expected[:1].expand(3, -1, -1))


def test_flip_pairs_from_names() -> None:
    assert keypoint_flip_pairs(COCO_KEYPOINT_NAMES) == [(k, k + 1) for k in range(1, 17, 2)]
    assert keypoint_flip_pairs(FACE_LANDMARK_NAMES) == [(0, 1), (3, 4)]
    with pytest.raises(ValueError, match="'left_paw' has no 'right' counterpart"):
        keypoint_flip_pairs(["left_paw", "nose"])


def _keypoint_file(tmp_path: Path) -> Path:
    _write_image(tmp_path / "p.png", 40, 50)
    points = [float(v) for k in range(17) for v in (k + 0.5, 2 * k + 1.25, k % 3)]
    data = {
        "images": [{"id": 3, "file_name": "p.png", "height": 40, "width": 50}],
        "categories": [
            {"id": 1, "name": "person", "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": [[1, 2]]},
            {"id": 2, "name": "ball"},
        ],
        "annotations": [
            _annotation(1, 3, 1, [0, 0, 20, 36], keypoints=points, num_keypoints=11),
            _annotation(2, 3, 2, [30, 30, 5, 5]),
            _annotation(3, 3, 1, [20, 1, 10, 10], keypoints=[0.0] * 51, num_keypoints=0),
        ],
    }
    (tmp_path / "kp.json").write_text(json.dumps(data))
    return tmp_path / "kp.json"


def test_keypoints_dataset(tmp_path: Path) -> None:
    dataset = CocoKeypoints(tmp_path, _keypoint_file(tmp_path))
    assert dataset.keypoint_names == COCO_KEYPOINT_NAMES and dataset.flip_pairs[0] == (1, 2)
    _, target = dataset[0]
    assert target["labels"].tolist() == [0, 0]  # only the person category, the ball is left out
    keypoints = target["keypoints"]
    assert isinstance(keypoints, tv_tensors.KeyPoints) and keypoints.shape == (2, 17, 2)
    assert keypoints[0, 5].tolist() == [5.5, 11.25]
    assert target["keypoints_visibility"][0].tolist() == [k % 3 for k in range(17)]
    packed = keypoints_xyv(keypoints, target["keypoints_visibility"])
    assert packed.shape == (2, 17, 3) and packed[0, 5].tolist() == [5.5, 11.25, 2.0]
    only_labelled = CocoKeypoints(tmp_path, tmp_path / "kp.json", min_keypoints=1)
    assert only_labelled[0][1]["labels"].tolist() == [0]


def test_keypoints_need_the_right_count(tmp_path: Path) -> None:
    path = _keypoint_file(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][0]["keypoints"] = [1.0, 2.0, 2.0]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="annotation id 1 needs 51 keypoint numbers, got 3"):
        CocoKeypoints(tmp_path, path)
    with pytest.raises(ValueError, match=r"keypoints must be \[..., K, 2\]"):
        keypoints_xyv(torch.zeros(2, 17, 2), torch.zeros(2, 16))


def test_keypoints_need_a_keypoint_category(coco_dir: Path) -> None:
    with pytest.raises(ValueError, match="has no category with a 'keypoints' list"):
        CocoKeypoints(coco_dir, coco_dir / "ann.json")
