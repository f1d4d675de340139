"""draw_poses: joints and limbs in the body-side colours where the keypoints are; keypoints
under the threshold and their limbs are left out."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sightkit.tasks.draw_pose import SIDE_COLORS, draw_poses

NAMES = ["nose", "left_wrist", "right_wrist", "left_knee"]


def test_joints_and_limbs_are_drawn_in_side_colours(tmp_path: Path) -> None:
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    pose = torch.tensor([[[20.0, 50.0, 0.9], [100.0, 50.0, 0.8], [180.0, 50.0, 0.1], [100.0, 90.0, 0.9]]])
    skeleton = [[1, 2], [2, 3], [2, 4]]  # 1-based, as COCO writes them
    picture = draw_poses(image, pose, skeleton, NAMES, tmp_path / "p.png", threshold=0.3)
    pixels = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).astype(int)
    assert np.array_equal(np.asarray(picture), pixels)
    assert tuple(pixels[50, 100]) == SIDE_COLORS["left"]  # the left wrist
    assert tuple(pixels[50, 20]) == SIDE_COLORS["middle"]  # the nose
    assert tuple(pixels[50, 60]) == SIDE_COLORS["middle"]  # nose - left wrist: sides differ
    assert tuple(pixels[70, 100]) == SIDE_COLORS["left"]  # left wrist - left knee
    assert pixels[40:61, 140:200].sum() == 0  # the right wrist scores 0.1: neither it nor its limb


def test_no_people_leaves_the_image_as_it_is(tmp_path: Path) -> None:
    image = torch.full((3, 20, 30), 7, dtype=torch.uint8)
    picture = draw_poses(image, torch.zeros(0, 4, 3), [[1, 2]], NAMES, tmp_path / "empty.png")
    assert (np.asarray(picture) == 7).all()
