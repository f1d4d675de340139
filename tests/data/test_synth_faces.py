"""The faces dataset: landmark geometry, COCO scenes read back as drawn, ImageFolder crops, LFW pairs."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.ops import box_iou

from sightkit.data import FACE_LANDMARK_NAMES, CocoKeypoints, FacesConfig, synthesize_faces
from sightkit.data.synthetic.faces import (
    DEPTH,
    NOSE_DEPTH,
    FaceIdentity,
    FacePose,
    landmarks,
    lfw_pairs,
    render_face_crop,
    render_face_scene,
)
from sightkit.data.synthetic.shapes import image_size

SEED = 2
CONFIG = FacesConfig(
    images=3,
    seed=SEED,
    size=96,
    max_faces=3,
    identities=3,
    test_identities=4,
    per_identity=3,
    crop=48,
    folds=2,
    pairs_per_fold=2,
    val_fraction=0.0,
    progress=False,
)


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faces")
    synthesize_faces(CONFIG, out=str(out))
    return out


def test_frontal_landmarks_are_the_identity_geometry() -> None:
    identity = FaceIdentity.sample(np.random.default_rng(0))
    points = landmarks(identity, FacePose(cx=50.0, cy=40.0, half_width=10.0, roll=0.0, yaw=0.0))
    i = identity
    expected = [
        [50 - 10 * i.eye_dx, 40 + 10 * i.eye_y],
        [50 + 10 * i.eye_dx, 40 + 10 * i.eye_y],
        [50.0, 40 + 10 * i.nose_y],
        [50 - 10 * i.mouth_w, 40 + 10 * i.mouth_y],
        [50 + 10 * i.mouth_w, 40 + 10 * i.mouth_y],
    ]
    np.testing.assert_allclose(points, expected, atol=1e-9)


def test_roll_rotates_and_yaw_turns_the_nose_most() -> None:
    identity = FaceIdentity.sample(np.random.default_rng(1))
    frontal = landmarks(identity, FacePose(0.0, 0.0, 1.0, 0.0, 0.0))
    rolled = landmarks(identity, FacePose(0.0, 0.0, 1.0, math.pi / 2, 0.0))
    np.testing.assert_allclose(rolled, np.stack([-frontal[:, 1], frontal[:, 0]], axis=1), atol=1e-12)
    yaw = 0.3
    turned = landmarks(identity, FacePose(0.0, 0.0, 1.0, 0.0, yaw))
    # A point (x, y) sits at depth z = DEPTH sqrt(1 - x^2 - (y/aspect)^2) (+ NOSE_DEPTH at the nose tip)
    # and goes to x cos(yaw) + z sin(yaw).
    z_nose = DEPTH * math.sqrt(1 - (identity.nose_y / identity.aspect) ** 2) + NOSE_DEPTH
    assert turned[2, 0] == pytest.approx(z_nose * math.sin(yaw))
    z_eye = DEPTH * math.sqrt(1 - identity.eye_dx**2 - (identity.eye_y / identity.aspect) ** 2)
    assert turned[1, 0] == pytest.approx(identity.eye_dx * math.cos(yaw) + z_eye * math.sin(yaw))
    np.testing.assert_allclose(turned[:, 1], frontal[:, 1])


def test_scenes_read_back_with_landmarks(faces_dir: Path) -> None:
    dataset = CocoKeypoints(faces_dir / "images", faces_dir / "annotations" / "train.json")
    assert dataset.keypoint_names == FACE_LANDMARK_NAMES and dataset.flip_pairs == [(0, 1), (3, 4)]
    assert len(dataset) == 3
    identities = [FaceIdentity.sample(np.random.default_rng([SEED, 1, k])) for k in range(CONFIG.identities)]
    faces = 0
    for index in range(3):
        image, target = dataset[index]
        rng = np.random.default_rng([SEED, 0, index])
        height, width = image_size(rng, CONFIG.size)
        drawn_image, drawn = render_face_scene(identities, rng, height, width, CONFIG.max_faces)
        assert torch.equal(image.as_subclass(torch.Tensor), torch.from_numpy(drawn_image).permute(2, 0, 1))
        boxes = target["boxes"].as_subclass(torch.Tensor)
        points = target["keypoints"].as_subclass(torch.Tensor)
        assert (target["keypoints_visibility"] == 2).all()
        for (_, drawn_marks, head), box, marks in zip(drawn, boxes, points, strict=True):
            assert torch.equal(marks, torch.from_numpy(drawn_marks.astype(np.float32)))
            rows, cols = head.any(1).nonzero()[0], head.any(0).nonzero()[0]
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            x1, y1, x2, y2 = box.tolist()
            assert ((marks[:, 0] > x1) & (marks[:, 0] < x2) & (marks[:, 1] > y1) & (marks[:, 1] < y2)).all()
            assert marks[0, 0] < marks[1, 0] and marks[3, 0] < marks[4, 0]  # ArcFace order: image-left first
            assert marks[2, 1] > marks[:2, 1].max() and marks[3:, 1].min() > marks[2, 1] - 1  # eyes, nose, mouth
            faces += 1
        # Faces do not overlap.
        if len(boxes) > 1:
            iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
            assert iou.max() < 0.5
    assert faces >= 3


def test_recognition_folders_and_landmarks(faces_dir: Path) -> None:
    train = ImageFolder(str(faces_dir / "recognition" / "train"))
    assert train.classes == ["person_00000", "person_00001", "person_00002"]
    assert len(train) == 9 and train[0][0].size == (48, 48)
    marks = json.loads((faces_dir / "recognition" / "landmarks.json").read_text())
    assert len(marks) == (3 + 4) * 3
    points = np.array(marks["train/person_00001/person_00001_0002.png"])
    assert points.shape == (5, 2) and ((points > 0) & (points < 48)).all()


def test_crops_depend_only_on_seed_identity_and_number(faces_dir: Path, tmp_path: Path) -> None:
    synthesize_faces(CONFIG, out=str(tmp_path), identities=2, images=1)
    relative = Path("person_00001") / "person_00001_0002.png"
    first = np.asarray(Image.open(faces_dir / "recognition" / "train" / relative))
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "recognition" / "train" / relative)))
    # Identity 2 is a training identity there and a test identity here: the same person either way.
    relative = Path("person_00002") / "person_00002_0001.png"
    moved = np.asarray(Image.open(tmp_path / "recognition" / "test" / relative))
    assert np.array_equal(np.asarray(Image.open(faces_dir / "recognition" / "train" / relative)), moved)


def test_pairs_file_follows_lfw(faces_dir: Path) -> None:
    lines = (faces_dir / "recognition" / "pairs.txt").read_text().splitlines()
    assert lines[0] == "2\t2"
    body = [line.split("\t") for line in lines[1:]]
    assert len(body) == 2 * (2 + 2)
    folds = [body[0:4], body[4:8]]
    names_per_fold = []
    for fold in folds:
        same, different = fold[:2], fold[2:]
        assert all(len(p) == 3 and p[1] != p[2] for p in same)
        assert all(len(p) == 4 and p[0] != p[2] for p in different)
        names = {p[0] for p in same} | {p[0] for p in different} | {p[2] for p in different}
        names_per_fold.append(names)
        for p in same:
            for k in (p[1], p[2]):
                assert (faces_dir / "recognition" / "test" / p[0] / f"{p[0]}_{int(k):04d}.png").is_file()
    assert not names_per_fold[0] & names_per_fold[1]  # an identity is in one fold only


def test_pairs_need_enough_identities() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="test_identities >= 2 \\* folds"):
        lfw_pairs(["a", "b", "c"], 3, folds=2, pairs_per_fold=1, rng=rng)
    with pytest.raises(ValueError, match="pairs_per_fold=50 is more than fold 0 can give"):
        lfw_pairs(["a", "b", "c", "d"], 3, folds=2, pairs_per_fold=50, rng=rng)


def test_pitch_tilts_the_nose_down() -> None:
    identity = FaceIdentity.sample(np.random.default_rng(1))
    frontal = landmarks(identity, FacePose(0.0, 0.0, 1.0, 0.0, 0.0))
    pitch = 0.3
    tilted = landmarks(identity, FacePose(0.0, 0.0, 1.0, 0.0, 0.0, pitch))
    # y' = y cos(pitch) + z sin(pitch): the nose tip, deepest, moves down most; x is unchanged.
    z_nose = DEPTH * math.sqrt(1 - (identity.nose_y / identity.aspect) ** 2) + NOSE_DEPTH
    assert tilted[2, 1] == pytest.approx(identity.nose_y * math.cos(pitch) + z_nose * math.sin(pitch))
    np.testing.assert_allclose(tilted[:, 0], frontal[:, 0])


def test_poses_and_occluders_are_recorded(tmp_path: Path) -> None:
    synthesize_faces(CONFIG, out=str(tmp_path), max_yaw=1.0, max_pitch=0.2, occluders=1.0)
    poses = json.loads((tmp_path / "recognition" / "poses.json").read_text())
    marks = json.loads((tmp_path / "recognition" / "landmarks.json").read_text())
    assert poses.keys() == marks.keys()
    assert {p["occluder"] for p in poses.values()} == {"sunglasses", "mask"}
    assert max(abs(p["yaw"]) for p in poses.values()) <= 1.0 and any(p["pitch"] != 0 for p in poses.values())
    # The recorded pose redraws the recorded landmarks of that identity.
    key = "train/person_00001/person_00001_0002.png"
    identity = FaceIdentity.sample(np.random.default_rng([SEED, 1, 1]))
    rng = np.random.default_rng([SEED, 2, 1, 2])
    _, points, pose, occluder = render_face_crop(identity, rng, CONFIG.crop, 1.0, 0.2, 1.0)
    assert (pose.yaw, pose.pitch, pose.roll, occluder) == tuple(
        poses[key][k] for k in ("yaw", "pitch", "roll", "occluder")
    )
    np.testing.assert_allclose(points, marks[key], atol=1e-4)


def test_occluders_cover_their_landmarks() -> None:
    identity = FaceIdentity.sample(np.random.default_rng(3))
    renders = {
        kind: render_face_crop(identity, np.random.default_rng(4), 96, occluder=kind)
        for kind in ("", "sunglasses", "mask")
    }
    bare, points = renders[""][0].astype(float), renders[""][1]
    # Sunglasses cover the eyes; the mask covers the nose and the mouth (a 5 x 5 window around each point).
    for kind, covered in (("sunglasses", [0, 1]), ("mask", [2, 3, 4])):
        image = renders[kind][0].astype(float)
        for k in range(5):
            x, y = (int(v) for v in points[k])
            changed = np.abs(image[y - 2 : y + 3, x - 2 : x + 3] - bare[y - 2 : y + 3, x - 2 : x + 3]).mean() > 20
            assert changed == (k in covered), (kind, k)
    with pytest.raises(ValueError, match=r"max_yaw in \[0, 1.2\]"):
        synthesize_faces(CONFIG, out="unused", max_yaw=2.0)
