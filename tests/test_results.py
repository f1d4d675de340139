"""Results: records equal hand-computed values (xywh, category ids, rounding, pycocotools' RLE),
pictures have the class colours where the boxes, keypoints and masks are, and nothing elsewhere."""

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as pycoco_mask
import pytest
import torch
from PIL import Image

from sightkit.results import Results, encode_rle
from sightkit.tasks.draw import PALETTE
from sightkit.tasks.draw_faces import LANDMARK_COLOURS
from sightkit.tasks.draw_pose import SIDE_COLORS

GREY = 90


def _detections(**overrides) -> Results:
    fields = {
        "image": np.full((60, 80, 3), GREY, np.uint8),
        "path": "photos/street.jpg",
        "task": "detect",
        "names": ["cat", "dog", "bird"],
        "boxes": np.array([[10.123, 20.0, 50.0, 40.456], [-5.0, 30.0, 30.0, 70.0]], np.float32),
        "scores": np.array([0.912345, 0.5], np.float32),
        "labels": np.array([2, 0]),
        "category_ids": [1, 3, 17],
    }
    return Results(**{**fields, **overrides})


def test_boxes_are_clipped_to_the_image() -> None:
    assert _detections().boxes.tolist()[1] == [0.0, 30.0, 30.0, 60.0]  # x1 -5 -> 0, y2 70 -> H=60


def test_to_dict_of_detections_is_the_documented_record_rounded() -> None:
    record = _detections().to_dict()
    assert record == {
        "path": "photos/street.jpg",
        "frame": None,
        "boxes": [[10.12, 20.0, 50.0, 40.46], [0.0, 30.0, 30.0, 60.0]],
        "scores": [0.9123, 0.5],
        "labels": [2, 0],
        "names": ["bird", "cat"],
    }
    assert _detections().to_json() == json.dumps(record)
    assert '"scores": [0.9123, 0.5]' in _detections().to_json()  # no float32 digits like 0.9122999906539917


def test_to_coco_writes_xywh_category_ids_and_scores() -> None:
    records = _detections().to_coco(image_id=42)
    assert records == [
        {"image_id": 42, "category_id": 17, "bbox": [10.12, 20.0, 39.88, 20.46], "score": 0.9123},
        {"image_id": 42, "category_id": 1, "bbox": [0.0, 30.0, 30.0, 30.0], "score": 0.5},
    ]
    assert [r["category_id"] for r in _detections(category_ids=None).to_coco(1)] == [2, 0]


def test_tensors_are_accepted_and_become_numpy() -> None:
    r = _detections(boxes=torch.tensor([[1.0, 2.0, 3.0, 4.0]]), scores=torch.tensor([0.5]), labels=torch.tensor([1]))
    assert isinstance(r.boxes, np.ndarray) and r.labels.dtype == np.int64
    assert r.to_dict()["names"] == ["dog"]


def test_pose_records_carry_keypoints() -> None:
    keypoints = np.array([[[12.345, 20.0, 0.87654], [30.0, 40.0, 0.1]]], np.float32)
    r = Results(
        image=np.zeros((50, 50, 3), np.uint8), path="p.png", task="pose", names=["person"],
        boxes=np.array([[10.0, 10.0, 40.0, 45.0]]), scores=np.array([0.75]), labels=np.array([0]), keypoints=keypoints,
    )  # fmt: skip
    assert r.to_dict()["keypoints"] == [[[12.35, 20.0, 0.8765], [30.0, 40.0, 0.1]]]
    (record,) = r.to_coco(image_id=3)
    assert record["keypoints"] == [12.35, 20.0, 0.8765, 30.0, 40.0, 0.1]
    assert record["bbox"] == [10.0, 10.0, 30.0, 35.0]


def test_faces_give_landmarks_and_embeddings() -> None:
    landmarks = np.arange(10, dtype=np.float32).reshape(1, 5, 2) + 0.126
    embedding = np.array([[0.6, 0.8]], np.float32)
    r = Results(
        image=np.zeros((20, 20, 3), np.uint8), path="f.jpg", task="face_detect", boxes=np.array([[1.0, 1.0, 9.0, 9.0]]),
        scores=np.array([0.99]), landmarks=landmarks, embeddings=embedding,
    )  # fmt: skip
    record = r.to_dict()
    assert record["landmarks"] == [[[0.13, 1.13], [2.13, 3.13], [4.13, 5.13], [6.13, 7.13], [8.13, 9.13]]]
    assert record["embeddings"] == [[0.6, 0.8]]
    assert "labels" not in record and len(r) == 1


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside pycocotools' decode
def test_class_map_rles_equal_pycocotools_and_decode_back() -> None:
    rng = np.random.default_rng(0)
    class_map = rng.integers(0, 3, (7, 9))
    class_map[:, 0] = 2  # runs that start with foreground in the first column
    r = Results(image=np.zeros((7, 9, 3), np.uint8), task="segment", names=["bg", "road", "car"], masks=class_map)
    records = r.to_dict()["masks"]
    assert [(m["label"], m["name"]) for m in records] == [(0, "bg"), (1, "road"), (2, "car")]
    for m in records:
        reference = pycoco_mask.encode(np.asfortranarray((class_map == m["label"]).astype(np.uint8)))
        assert m["counts"] == reference["counts"].decode() and m["size"] == [7, 9]
        decoded = pycoco_mask.decode({"size": m["size"], "counts": m["counts"].encode()})
        assert np.array_equal(decoded, class_map == m["label"])
    coco = r.to_coco(image_id=5)
    assert [(c["category_id"], c["segmentation"]["counts"]) for c in coco] == [
        (m["label"], m["counts"]) for m in records
    ]
    assert len(r) == 3


def test_encode_rle_of_an_empty_mask_is_one_run() -> None:
    assert encode_rle(np.zeros((3, 4), bool)) == {"size": [3, 4], "counts": pycoco_mask.encode(
        np.zeros((3, 4), np.uint8, order="F"))["counts"].decode()}  # fmt: skip


def test_plot_draws_box_borders_in_the_class_colour_and_leaves_the_rest() -> None:
    r = _detections(boxes=np.array([[20.0, 30.0, 60.0, 55.0]]), scores=np.array([0.9]), labels=np.array([1]))
    picture = r.plot()
    assert picture.shape == r.image.shape and picture.dtype == np.uint8
    assert tuple(picture[45, 20]) == PALETTE[1]  # the left border, below the label tag
    assert tuple(picture[55, 40]) == PALETTE[1]  # the bottom border
    assert tuple(picture[45, 40]) == (GREY,) * 3  # inside: untouched
    assert tuple(picture[5, 75]) == (GREY,) * 3  # outside: untouched
    tag = picture[20:30, 21:40]  # the label tag above the box: the colour with white text
    assert (tag == PALETTE[1]).all(-1).any() and (tag.min(-1) > 200).any()  # text: near-white (antialiased)
    assert (r.image == GREY).all()  # the input is not drawn on
    hidden = r.plot(conf=0.95)
    assert (hidden == GREY).all()


def test_plot_of_poses_colours_joints_by_side() -> None:
    keypoints = np.zeros((1, 17, 3), np.float32)
    keypoints[0, 9] = (30, 40, 0.9)  # left wrist
    keypoints[0, 10] = (70, 40, 0.9)  # right wrist
    r = Results(
        image=np.zeros((80, 100, 3), np.uint8), task="pose", names=["person"], boxes=np.array([[5.0, 5.0, 95.0, 75.0]]),
        scores=np.array([0.8]), labels=np.array([0]), keypoints=keypoints,
    )  # fmt: skip
    picture = r.plot()
    assert tuple(picture[40, 30]) == SIDE_COLORS["left"] and tuple(picture[40, 70]) == SIDE_COLORS["right"]
    assert tuple(picture[40, 50]) == (0, 0, 0)  # the wrists are not linked in COCO's skeleton


def test_plot_of_landmarks_and_masks() -> None:
    landmarks = np.array([[[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]]], np.float32)
    r = Results(image=np.zeros((40, 40, 3), np.uint8), task="face_detect", landmarks=landmarks)
    picture = r.plot()
    assert [tuple(picture[y, x]) for x, y in landmarks[0].astype(int)] == list(LANDMARK_COLOURS)
    class_map = np.zeros((40, 60), np.int64)
    class_map[20:, 30:] = 2
    image = np.full((40, 60, 3), 100, np.uint8)
    picture = Results(image=image, task="segment", names=["bg", "road", "car"], masks=class_map).plot()
    blended = tuple(round(0.5 * 100 + 0.5 * c) for c in PALETTE[1])  # class 2 -> PALETTE[2 - 1]
    assert tuple(picture[35, 55]) == blended
    assert tuple(picture[35, 5]) == (100, 100, 100)  # background: no colour
    assert (picture[2:14, 2:20].min(-1) > 200).any()  # the legend's white text in the top-left corner


def test_save_names_files_by_stem_and_frame(tmp_path: Path) -> None:
    r = _detections()
    assert r.save(tmp_path) == tmp_path / "street.jpg"
    assert _detections(frame=3, path="clips/run.mp4").save(tmp_path / "out") == tmp_path / "out" / "run_3.jpg"
    assert r.save(tmp_path / "x.png") == tmp_path / "x.png"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), r.plot())
    assert _detections(path="https://example.com/a/pic.jpeg?x=1").save(tmp_path) == tmp_path / "pic.jpg"


def test_len_and_repr() -> None:
    r = _detections()
    assert len(r) == 2
    assert repr(r) == (
        "Results(task='detect', path='photos/street.jpg', image=60x80, "
        "2 instances (1 bird, 1 cat): boxes, scores, labels)"
    )
    empty = _detections(boxes=np.zeros((0, 4)), scores=np.zeros(0), labels=np.zeros(0, np.int64))
    assert len(empty) == 0 and empty.to_coco(1) == [] and (empty.plot() == GREY).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image": np.zeros((4, 4), np.uint8)}, r"image must be uint8 \[H, W, 3\] RGB"),
        ({"boxes": np.zeros((2, 5))}, r"boxes must be \[N, 4\]; got shape \(2, 5\)"),
        ({"scores": np.zeros(3)}, "scores has 3 rows but the other per-instance fields have 2"),
        ({"labels": np.array([0, 3])}, r"labels must be label indices in \[0, 3\)"),
        ({"category_ids": [1, 2]}, "category_ids must have one id per name"),
    ],
)
def test_inconsistent_fields_are_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _detections(**overrides)


def test_results_compare_by_value() -> None:
    assert _detections() == _detections()
    assert _detections() != _detections(scores=np.array([0.912345, 0.6], np.float32))
    assert _detections() != _detections(path="other.jpg")
    assert _detections() != _detections(keypoints=np.zeros((2, 1, 3)))
    assert _detections(labels=torch.tensor([2, 0])) == _detections()  # tensors become the same arrays
