"""TopDownKeypoints: the crop puts pixels where it puts keypoints (with and without
augmentation), the inverse brings keypoints back, flips swap left and right, keypoints
outside the crop are masked, detector boxes from a JSON, collation, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightkit.data import COCO_KEYPOINT_NAMES, TopDownKeypoints, collate_topdown
from sightkit.data.synthetic.people import synthesize_people
from sightkit.ops import affine_keypoints

NOSE, LEFT_WRIST, RIGHT_WRIST = (COCO_KEYPOINT_NAMES.index(n) for n in ("nose", "left_wrist", "right_wrist"))
PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # pixels stay 0..255


def write_dataset(root: Path) -> tuple[Path, Path]:
    """One 120 x 90 black image with one white pixel at row 40, column 60 (the nose, whose
    continuous position is its centre (60.5, 40.5)), and one person."""
    (root / "images").mkdir(parents=True)
    pixels = np.zeros((90, 120, 3), np.uint8)
    pixels[40, 60] = 255
    Image.fromarray(pixels).save(root / "images" / "a.png")
    keypoints = np.zeros((17, 3))
    keypoints[NOSE] = (60.5, 40.5, 2)
    keypoints[LEFT_WRIST] = (55.0, 50.0, 2)
    keypoints[RIGHT_WRIST] = (70.0, 52.0, 1)
    keypoints[COCO_KEYPOINT_NAMES.index("left_ankle")] = (5.0, 85.0, 2)  # far outside the box
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 120, "height": 90}],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": []}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 1,
                "bbox": [50.0, 30.0, 24.0, 32.0],
                "area": 500.0,
                "iscrowd": 0,
                "keypoints": keypoints.ravel().tolist(),
                "num_keypoints": 4,
            }
        ],
    }
    (root / "annotations").mkdir()
    path = root / "annotations" / "val.json"
    path.write_text(json.dumps(data))
    return root / "images", path


def centroid(image: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre of a [3, H, W] image, continuous coordinates."""
    weights = image[0].double()
    ys = torch.arange(image.shape[1], dtype=torch.float64) + 0.5
    xs = torch.arange(image.shape[2], dtype=torch.float64) + 0.5
    return torch.stack([(weights.sum(0) * xs).sum(), (weights.sum(1) * ys).sum()]) / weights.sum()


def test_crop_puts_the_pixel_where_it_puts_the_keypoint(tmp_path: Path) -> None:
    images, annotations = write_dataset(tmp_path)
    # The box is 24 x 32, the aspect ratio of 96 x 128: without padding, 4 crop pixels per image pixel.
    dataset = TopDownKeypoints(images, annotations, (128, 96), padding=1.0, **PLAIN)
    assert len(dataset) == 1
    image, target = dataset[0]
    assert image.shape == (3, 128, 96)
    # (60.5 - 50) * 4 = 42 and (40.5 - 30) * 4 = 42.
    torch.testing.assert_close(target["keypoints"][NOSE], torch.tensor([42.0, 42.0, 2.0]))
    torch.testing.assert_close(centroid(image), torch.tensor([42.0, 42.0], dtype=torch.float64), atol=1e-6, rtol=0)
    assert target["image_id"].item() == 7 and target["score"].item() == 1.0 and target["area"].item() == 500.0


def test_augmented_crops_keep_pixels_and_keypoints_together(tmp_path: Path) -> None:
    images, annotations = write_dataset(tmp_path)
    dataset = TopDownKeypoints(images, annotations, (128, 96), train=True, rotation_prob=1.0, **PLAIN)
    torch.manual_seed(0)
    flips = 0
    for _ in range(12):
        image, target = dataset[0]
        nose = target["keypoints"][NOSE, :2].double()
        torch.testing.assert_close(centroid(image), nose, atol=0.02, rtol=0)
        flips += bool(target["keypoints"][LEFT_WRIST, 2] == 1)  # the hidden right wrist moved to the left slot
    assert 0 < flips < 12  # both flipped and unflipped crops were drawn


def test_the_inverse_brings_the_keypoints_back(tmp_path: Path) -> None:
    images, annotations = write_dataset(tmp_path)
    # Random scales and rotations; flips swap slots and are checked in the next test.
    dataset = TopDownKeypoints(images, annotations, (64, 48), train=True, rotation_prob=1.0, flip_prob=0.0)
    torch.manual_seed(1)
    for _ in range(5):
        _, target = dataset[0]
        labelled = target["keypoints"][:, 2] > 0
        back = affine_keypoints(target["keypoints"].double(), target["inverse"])
        truth = target["image_keypoints"].double()
        assert labelled.sum() >= 2
        assert (back[labelled, :2] - truth[labelled, :2]).abs().max() < 1e-4


def test_flip_swaps_left_and_right(tmp_path: Path) -> None:
    images, annotations = write_dataset(tmp_path)
    plain = TopDownKeypoints(images, annotations, (64, 48), **PLAIN)
    flipped = TopDownKeypoints(images, annotations, (64, 48), train=True, scale_jitter=0.0, rotation=0.0,
                               flip_prob=1.0, **PLAIN)  # fmt: skip
    image, target = plain[0]
    flipped_image, flipped_target = flipped[0]
    torch.testing.assert_close(flipped_image, image.flip(-1))
    # The left-wrist slot now holds the mirrored right wrist, with its visibility.
    right = target["keypoints"][RIGHT_WRIST]
    torch.testing.assert_close(
        flipped_target["keypoints"][LEFT_WRIST], torch.stack([48 - right[0], right[1], right[2]])
    )
    back = affine_keypoints(flipped_target["keypoints"].double(), flipped_target["inverse"])
    torch.testing.assert_close(back[LEFT_WRIST, :2].float(), torch.tensor([70.0, 52.0]))


def test_keypoints_outside_the_crop_are_masked(tmp_path: Path) -> None:
    images, annotations = write_dataset(tmp_path)
    _, target = TopDownKeypoints(images, annotations, (64, 48))[0]
    ankle = COCO_KEYPOINT_NAMES.index("left_ankle")
    assert target["keypoints"][ankle, 2] == 0 and target["image_keypoints"][ankle, 2] == 2
    assert target["keypoints"][RIGHT_WRIST, 2] == 1  # labelled but hidden keeps its code


def test_detector_boxes(tmp_path: Path) -> None:
    images, annotations = write_dataset(tmp_path)
    boxes = tmp_path / "boxes.json"
    detections = [
        {"image_id": 7, "category_id": 1, "bbox": [50.0, 30.0, 24.0, 32.0], "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": [-10.0, 0.0, 30.0, 20.0], "score": 0.2},
        {"image_id": 7, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.99},
    ]
    boxes.write_text(json.dumps(detections))
    dataset = TopDownKeypoints(images, annotations, (128, 96), boxes=boxes, padding=1.0, **PLAIN)
    assert len(dataset) == 2 and dataset.uses_detections
    image, target = dataset[0]
    torch.testing.assert_close(centroid(image), torch.tensor([42.0, 42.0], dtype=torch.float64), atol=1e-6, rtol=0)
    assert target["score"].item() == pytest.approx(0.9) and (target["image_keypoints"] == 0).all()
    _, clamped = dataset[1]
    assert clamped["box"].tolist() == [0.0, 0.0, 20.0, 20.0] and clamped["area"].item() == 400.0
    assert len(TopDownKeypoints(images, annotations, boxes=boxes, min_score=0.5)) == 1

    boxes.write_text(json.dumps([{"image_id": 8, "bbox": [0, 0, 1, 1], "score": 1.0}]))
    with pytest.raises(ValueError, match="detection 0 has image_id 8, not in the annotations"):
        TopDownKeypoints(images, annotations, boxes=boxes)
    boxes.write_text(json.dumps([{"image_id": 7, "bbox": [0, 0, 1], "score": 1.0}]))
    with pytest.raises(ValueError, match="detection 0 has a bbox of 3 numbers"):
        TopDownKeypoints(images, annotations, boxes=boxes)
    with pytest.raises(FileNotFoundError, match="does not exist; give a COCO results JSON"):
        TopDownKeypoints(images, annotations, boxes=tmp_path / "none.json")


def test_one_sample_per_labelled_person_of_synthetic_people(tmp_path: Path) -> None:
    paths = synthesize_people(out=str(tmp_path / "people"), images=3, size=96, val_fraction=0.0, progress=False)
    dataset = TopDownKeypoints(paths["images"], paths["train"], (64, 48))
    people = json.loads(Path(paths["train"]).read_text())["annotations"]
    assert len(dataset) == sum(1 for a in people if a["num_keypoints"] > 0) > 0
    images, targets = collate_topdown([dataset[i] for i in range(len(dataset))])
    assert images.shape == (len(dataset), 3, 64, 48) and targets["keypoints"].shape == (len(dataset), 17, 3)
    assert targets["inverse"].dtype == torch.float64


def test_collate_drops_missing_samples_and_errors(tmp_path: Path) -> None:
    images, annotations = write_dataset(tmp_path)
    dataset = TopDownKeypoints(images, annotations, (64, 48))
    batch, targets = collate_topdown([dataset[0], None])
    assert batch.shape[0] == 1 and targets["image_id"].tolist() == [7]
    with pytest.raises(ValueError, match="all 2 samples of the batch are missing"):
        collate_topdown([None, None])
    (images / "a.png").unlink()
    skipping = TopDownKeypoints(images, annotations, (64, 48), on_error="skip")
    assert skipping[0] is None and skipping.skipped == 1
    with pytest.raises(OSError, match=r"a\.png"):
        dataset[0]
    with pytest.raises(ValueError, match=r"input_size must be \(H, W\)"):
        TopDownKeypoints(images, annotations, (64,))
