"""Face data: identity folders aligned by their landmarks, LFW pairs.txt, collation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightkit.data.faces import FaceFolder, collate_faces, pair_files, read_lfw_pairs
from sightkit.ops import arcface_template


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_crops_put_the_landmarks_on_the_template(tmp_path: Path) -> None:
    # A 100 x 100 image, white squares of 3 x 3 pixels centred on 5 points (continuous
    # convention: the square [x - 1.5, x + 1.5) covers pixels x - 1 .. x + 1 when x = k + 0.5).
    template = arcface_template(112, torch.float64)
    points = (template * 0.6 + 20).round() + 0.5
    image = np.zeros((100, 100, 3), np.uint8)
    for x, y in points.tolist():
        image[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
    _write(tmp_path / "faces" / "ann" / "ann_0001.png", image)
    _write(tmp_path / "faces" / "bob" / "bob_0001.png", image)
    marks = {f"{name}/{name}_0001.png": points.tolist() for name in ("ann", "bob")}
    (tmp_path / "faces" / "landmarks.json").write_text(__import__("json").dumps(marks))
    folder = FaceFolder(tmp_path / "faces", size=56, landmarks=tmp_path / "faces" / "landmarks.json")
    assert folder.classes == ["ann", "bob"] and len(folder) == 2
    crop, target = folder[1]
    assert target == {"label": 1, "index": 1}
    assert crop.shape == (3, 56, 56) and crop.min() >= -1 - 1e-6 and crop.max() <= 1 + 1e-6
    # The crop is the template at half scale (56 / 112); the squares are 3 / 0.6 / 2 = 2.5 px wide there.
    for x, y in (template / 2).tolist():
        assert crop[0, round(y), round(x)] > 0.5, (x, y)
    assert crop[0].gt(0.5).float().mean() < 0.05  # and little else is bright


def test_without_landmarks_the_images_are_resized(tmp_path: Path) -> None:
    _write(tmp_path / "ids" / "a" / "a_0001.jpg", np.full((40, 40, 3), 255, np.uint8))
    crop, _ = FaceFolder(tmp_path / "ids", size=16)[0]
    torch.testing.assert_close(crop, torch.ones(3, 16, 16))


def test_lfw_pairs(tmp_path: Path) -> None:
    for name in ("ann", "bob", "cy"):
        for k in (1, 2):
            _write(tmp_path / name / f"{name}_{k:04d}.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "pairs.txt").write_text("2\t1\nann\t1\t2\nann\t1\tbob\t2\nbob\t1\t2\nbob\t1\tcy\t1\n")
    pairs = read_lfw_pairs(tmp_path / "pairs.txt", tmp_path)
    assert [(p.first.name, p.second.name, p.same, p.fold) for p in pairs] == [
        ("ann_0001.png", "ann_0002.png", True, 0),
        ("ann_0001.png", "bob_0002.png", False, 0),
        ("bob_0001.png", "bob_0002.png", True, 1),
        ("bob_0001.png", "cy_0001.png", False, 1),
    ]
    files, indices, same, folds = pair_files(pairs)
    assert [f.name for f in files] == ["ann_0001.png", "ann_0002.png", "bob_0001.png", "bob_0002.png", "cy_0001.png"]
    assert indices.tolist() == [[0, 1], [0, 3], [2, 3], [2, 4]]
    assert same.tolist() == [True, False, True, False] and folds.tolist() == [0, 0, 1, 1]
    (tmp_path / "bad.txt").write_text("2\t1\nann\t1\t2\n")
    with pytest.raises(ValueError, match=r"the header promises 2 x 2 x 1 pairs, but 1 lines follow"):
        read_lfw_pairs(tmp_path / "bad.txt", tmp_path)
    (tmp_path / "missing.txt").write_text("1\nann\t1\t3\nann\t1\tbob\t1\n")
    with pytest.raises(FileNotFoundError, match=r"pairs.txt names ann 3, but .*ann_0003\.\* .* is missing"):
        read_lfw_pairs(tmp_path / "missing.txt", tmp_path)


def test_collate() -> None:
    samples = [(torch.zeros(3, 4, 4), {"label": 2, "index": 5}), (torch.ones(3, 4, 4), {"label": 0, "index": 1})]
    inputs, indices = collate_faces(samples)
    assert inputs["images"].shape == (2, 3, 4, 4) and inputs["images"][1].eq(1).all()
    assert inputs["labels"].tolist() == [2, 0] and indices.tolist() == [5, 1]


def test_missing_folders_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"face folder .* does not exist"):
        FaceFolder(tmp_path / "nothing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no face images"):
        FaceFolder(tmp_path / "empty")
