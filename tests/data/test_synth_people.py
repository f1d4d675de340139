"""The people dataset reads back as drawn: keypoints with COCO visibility, visible masks, boxes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from faster_coco_eval.core import mask as coco_mask

from sightkit.data import COCO_KEYPOINT_NAMES, CocoKeypoints, PeopleConfig, synthesize_people
from sightkit.data.synthetic.people import pose, render_people
from sightkit.data.synthetic.shapes import image_size

SEED = 5
CONFIG = PeopleConfig(images=4, seed=SEED, size=128, max_people=3, max_occluders=2, val_fraction=0.0, progress=False)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> CocoKeypoints:
    out = tmp_path_factory.mktemp("people")
    paths = synthesize_people(CONFIG, out=str(out))
    return CocoKeypoints(paths["images"], paths["train"], masks=True)


def test_round_trip_keypoints_masks_boxes(people: CocoKeypoints) -> None:
    assert people.keypoint_names == COCO_KEYPOINT_NAMES and len(people) == 4
    seen = {0: 0, 1: 0, 2: 0}
    for index in range(4):
        rng = np.random.default_rng([SEED, index])
        height, width = image_size(rng, CONFIG.size)
        drawn_image, drawn = render_people(rng, height, width, CONFIG.max_people, CONFIG.max_occluders)
        image, target = people[index]
        assert torch.equal(image.as_subclass(torch.Tensor), torch.from_numpy(drawn_image).permute(2, 0, 1))
        keypoints = target["keypoints"].as_subclass(torch.Tensor)
        visibility = target["keypoints_visibility"]
        assert keypoints.shape[0] == len(drawn)
        for person, points, visible, mask, box in zip(
            drawn, keypoints, visibility, target["masks"], target["boxes"].as_subclass(torch.Tensor), strict=True
        ):
            expected = torch.from_numpy(person.keypoints).float()
            assert torch.equal(points, expected[:, :2]) and visibility.dtype == torch.int64
            assert visible.tolist() == expected[:, 2].long().tolist()
            assert torch.equal(mask.bool(), torch.from_numpy(person.mask))
            rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
            assert box.tolist() == [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]
            for (x, y), v in zip(points.tolist(), visible.tolist(), strict=True):
                seen[v] += 1
                if v == 0:
                    assert (x, y) == (0.0, 0.0)
                else:
                    assert 0 <= x < width and 0 <= y < height
                    # Visible keypoints lie on the figure's visible pixels; hidden ones under something drawn later.
                    assert bool(mask[int(y), int(x)]) == (v == 2)
    assert seen[2] > 0 and seen[1] + seen[0] > 0


def test_annotation_fields_are_consistent(people: CocoKeypoints) -> None:
    data = json.loads(people.annotation_file.read_text())
    for annotation in data["annotations"]:
        visibility = annotation["keypoints"][2::3]
        assert annotation["num_keypoints"] == sum(v > 0 for v in visibility)
        rle = dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode())
        assert coco_mask.area(rle) == annotation["area"]
        assert coco_mask.toBbox(rle).tolist() == annotation["bbox"]
    assert data["categories"][0]["skeleton"][0] == [16, 14]


def test_pose_proportions_and_sides() -> None:
    figure = pose(np.random.default_rng(0), 100.0, np.array([50.0, 80.0]))
    points = figure.points
    index = {name: i for i, name in enumerate(COCO_KEYPOINT_NAMES)}
    # The figure faces the camera: the person's left shoulder and hip are on the image's right.
    for part in ("shoulder", "hip", "eye", "ear"):
        assert points[index[f"left_{part}"], 0] > points[index[f"right_{part}"], 0]
    for a, b, length in (
        ("shoulder", "elbow", 16.0),
        ("elbow", "wrist", 15.0),
        ("hip", "knee", 23.0),
        ("knee", "ankle", 22.0),
    ):
        for side in ("left", "right"):
            d = np.linalg.norm(points[index[f"{side}_{a}"]] - points[index[f"{side}_{b}"]])
            assert d == pytest.approx(length)
    hips = (points[index["left_hip"]] + points[index["right_hip"]]) / 2
    np.testing.assert_allclose(hips, [50.0, 80.0])


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need max_people >= 1"):
        synthesize_people(CONFIG, out=str(tmp_path), max_people=0)
