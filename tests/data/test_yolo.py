"""YOLO datasets: the dataset file, label paths, label lines to COCO pixels (boxes, polygons,
keypoints) against hand-computed values, COCO back to label lines, and errors that name the file."""

from pathlib import Path

import pytest
import yaml
from PIL import Image

from sightkit.data.yolo import (
    find_yolo_yaml,
    read_yolo_yaml,
    write_yolo,
    yolo_label_path,
    yolo_split_images,
    yolo_to_coco,
)


def _image(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


def _label(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _dataset(root: Path, config: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root / "data.yaml"


def test_label_path_replaces_the_last_images_folder() -> None:
    assert yolo_label_path("/d/images/train/a.jpg") == Path("/d/labels/train/a.txt")
    assert yolo_label_path("/images/d/images/x/b.PNG") == Path("/images/d/labels/x/b.txt")


def test_boxes_polygons_and_negatives_in_pixels(tmp_path: Path) -> None:
    _dataset(tmp_path, {"train": "images/train", "val": "images/train", "names": {0: "cat", 1: "dog"}})
    _image(tmp_path / "images" / "train" / "a.png", (100, 50))  # W=100, H=50
    _image(tmp_path / "images" / "train" / "b.png", (20, 20))  # no label file: no objects
    # cx=0.5 cy=0.5 w=0.2 h=0.4 -> w=20, h=20, x=50-10=40, y=25-10=15; a polygon's extent is its box.
    _label(tmp_path / "labels" / "train" / "a.txt", "0 0.5 0.5 0.2 0.4\n\n1 0.1 0.2 0.3 0.2 0.2 0.6\n")
    coco, root = yolo_to_coco(tmp_path, "train")
    assert root == tmp_path
    assert coco["images"] == [
        {"id": 1, "file_name": "images/train/a.png", "width": 100, "height": 50},
        {"id": 2, "file_name": "images/train/b.png", "width": 20, "height": 20},
    ]
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "cat"), (2, "dog")]
    box, polygon = coco["annotations"]
    assert (box["image_id"], box["category_id"], box["bbox"], box["area"]) == (1, 1, [40.0, 15.0, 20.0, 20.0], 400.0)
    assert polygon["bbox"] == pytest.approx([10.0, 10.0, 20.0, 20.0])
    assert polygon["segmentation"] == [pytest.approx([10.0, 10.0, 30.0, 10.0, 20.0, 30.0])]


def test_pose_labels_with_and_without_visibility(tmp_path: Path) -> None:
    config = {"train": "images", "names": ["person"], "kpt_shape": [2, 3], "kpt_names": {0: ["head", "foot"]}}
    _dataset(tmp_path, config)
    _image(tmp_path / "images" / "p.png", (40, 20))
    _label(tmp_path / "labels" / "p.txt", "0 0.5 0.5 0.5 0.5 0.25 0.5 2 0.75 0.4 0\n")
    coco, _ = yolo_to_coco(tmp_path, "train")
    (person,) = coco["annotations"]
    assert person["keypoints"] == [10.0, 10.0, 2, 0.0, 0.0, 0] and person["num_keypoints"] == 1
    assert coco["categories"][0]["keypoints"] == ["head", "foot"]
    _dataset(tmp_path, {**config, "kpt_shape": [2, 2], "kpt_names": None})
    _label(tmp_path / "labels" / "p.txt", "0 0.5 0.5 0.5 0.5 0.25 0.5 0 0\n")  # (0, 0): not labelled
    (person,) = yolo_to_coco(tmp_path, "train")[0]["annotations"]
    assert person["keypoints"] == [10.0, 10.0, 2, 0.0, 0.0, 0]
    assert yolo_to_coco(tmp_path, "train")[0]["categories"][0]["keypoints"] == ["keypoint_0", "keypoint_1"]


def test_splits_from_list_files_and_relative_path_key(tmp_path: Path) -> None:
    root = tmp_path / "datasets" / "toy"
    _image(root / "images" / "a.png", (8, 8))
    _image(root / "images" / "b.png", (8, 8))
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "val.txt").write_text("./../images/b.png\nimages/a.png\n")
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "toy.yaml").write_text(
        yaml.safe_dump({"path": "../datasets/toy", "val": "lists/val.txt", "names": ["x"]})
    )
    dataset = read_yolo_yaml(config_dir / "toy.yaml")
    assert dataset.root == config_dir / "../datasets/toy"
    assert [p.resolve() for p in yolo_split_images(dataset, "val")] == [
        root / "images" / "b.png",
        root / "images" / "a.png",
    ]
    assert find_yolo_yaml(config_dir) == config_dir / "toy.yaml" and find_yolo_yaml(root) is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", r"a\.txt:1: a label is 'class cx cy w h' \(5 fields\).*got 4 fields"),
        ("2 0.5 0.5 0.2 0.2", r"a\.txt:1: class 2 is not an index into the 2 names"),
        ("0 0.5 x 0.2 0.2", r"a\.txt:1: label .* every field must be a number"),
        ("0.5 0.5 0.5 0.2 0.2", r"class 0\.5 is not an index"),
    ],
)
def test_bad_label_lines_name_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    _dataset(tmp_path, {"train": "images", "names": ["a", "b"]})
    _image(tmp_path / "images" / "a.png", (8, 8))
    _label(tmp_path / "labels" / "a.txt", line + "\n")
    with pytest.raises(ValueError, match=message):
        yolo_to_coco(tmp_path, "train")
    found = []
    coco, _ = yolo_to_coco(tmp_path, "train", problems=lambda *p: found.append(p))
    assert coco["annotations"] == [] and [(k, Path(f).name, r) for k, f, r, _ in found] == [
        ("bad_label", "a.txt", "line 1")
    ]


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"train": "images"}, ValueError, "needs names"),
        ({"train": "images", "names": ["a"], "nc": 2}, ValueError, "nc: 2 but names has 1"),
        ({"names": ["a"]}, ValueError, "names no images"),
        (
            {"train": "images", "names": ["a"], "kpt_shape": [3, 4]},
            ValueError,
            r"kpt_shape must be \[K, 2\] or \[K, 3\]",
        ),
        ({"train": "images", "names": {0: "a", 2: "b"}}, ValueError, r"indexed 0\.\.n-1"),
        ({"train": "images", "names": ["a"], "path": "nowhere"}, FileNotFoundError, "path: nowhere"),
    ],
)
def test_bad_dataset_files(tmp_path: Path, config: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        read_yolo_yaml(_dataset(tmp_path, config))


def test_unknown_split_and_missing_entries(tmp_path: Path) -> None:
    dataset = read_yolo_yaml(_dataset(tmp_path, {"train": "images", "val": "gone", "names": ["a"]}))
    with pytest.raises(ValueError, match=r"split='test' is not in .*it has train, val"):
        yolo_split_images(dataset, "test")
    with pytest.raises(FileNotFoundError, match=r"'gone'.*does not exist"):
        yolo_split_images(dataset, "val")


def test_write_yolo_label_lines_are_normalised_centres(tmp_path: Path) -> None:
    _image(tmp_path / "src" / "a.png", (100, 50))
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "width": 100, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 9, "bbox": [40, 15, 20, 20], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 100, 50], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},  # YOLO has no crowds
        ],
        "categories": [{"id": 9, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    placed = []
    path = write_yolo(
        tmp_path / "out", {"train": (coco, tmp_path / "src")}, place_image=lambda s, d: placed.append((s, d))
    )
    assert placed == [(tmp_path / "src" / "a.png", tmp_path / "out" / "images" / "train" / "a.png")]
    # Classes in category-id order: cat (3) is 0, dog (9) is 1.
    assert (tmp_path / "out" / "labels" / "train" / "a.txt").read_text() == "1 0.5 0.5 0.2 0.4\n0 0.5 0.5 1 1\n"
    written = yaml.safe_load(path.read_text())
    assert written == {"train": "images/train", "nc": 2, "names": {0: "cat", 1: "dog"}, "category_ids": [3, 9]}


def test_extra_split_keys_and_ultralytics_datasets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _image(tmp_path / "store" / "toy" / "images" / "minival" / "a.png", (8, 8))
    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / "settings.json").write_text(f'{{"datasets_dir": "{tmp_path / "store"}"}}')
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(settings))
    config = {
        "path": "toy",  # relative: found in ultralytics' datasets_dir, as ultralytics finds it
        "train": "images/minival",
        "minival": "images/minival",
        "download": "https://example.com/toy.zip",  # not a split
        "names": ["a"],
    }
    dataset = read_yolo_yaml(_dataset(tmp_path / "configs", config))
    assert dataset.root == tmp_path / "store" / "toy"
    assert list(dataset.splits) == ["train", "minival"]
