"""COCO, YOLO and VOC datasets: round trips keep every image, box and keypoint; ``data=`` reads
all three into the same training targets; the converted JSON is cached and refreshed;
``data check`` points at the bad label line or XML; ``data convert`` from the command line."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sightkit.cli.app import app
from sightkit.data import check_dataset
from sightkit.data.formats import (
    convert_dataset,
    dataset_annotations,
    dataset_splits,
    detect_layout,
    load_split,
    open_detection_dataset,
)
from sightkit.data.synthetic.people import PeopleConfig, synthesize_people
from sightkit.data.synthetic.shapes import ShapesConfig, synthesize_shapes


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    synthesize_shapes(ShapesConfig(out=str(out), images=6, size=64, seed=3, progress=False))
    return out


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("people")
    synthesize_people(PeopleConfig(out=str(out), images=4, size=96, seed=1, progress=False))
    return out


def _by_image(coco: dict) -> dict[str, list[tuple]]:
    """Each image (by base name, with its size) -> its objects (category name, box, keypoints)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: (Path(i["file_name"]).name, i["width"], i["height"]) for i in coco["images"]}
    objects: dict = {key: [] for key in files.values()}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            objects[files[a["image_id"]]].append((names[a["category_id"]], a["bbox"], a.get("keypoints")))
    return objects  # every converter keeps the objects of an image in file order


def _assert_same(original: dict, converted: dict, atol: float) -> None:
    expected, found = _by_image(original), _by_image(converted)
    assert list(found) == list(expected)  # same images, sizes and order
    for key in expected:
        assert [o[0] for o in found[key]] == [o[0] for o in expected[key]], key
        np.testing.assert_allclose([o[1] for o in found[key]], [o[1] for o in expected[key]], atol=atol)
        for (_, _, want), (_, _, got) in zip(expected[key], found[key], strict=True):
            if want is not None:
                np.testing.assert_allclose(got[0::3], want[0::3], atol=atol)
                np.testing.assert_allclose(got[1::3], want[1::3], atol=atol)
                assert got[2::3] == want[2::3]


def test_layouts_are_told_apart(shapes: Path, tmp_path: Path) -> None:
    convert_dataset(shapes, tmp_path / "yolo", "yolo")
    convert_dataset(shapes, tmp_path / "voc", "voc")
    assert [
        detect_layout(p) for p in (shapes, tmp_path / "yolo", tmp_path / "yolo" / "data.yaml", tmp_path / "voc")
    ] == [
        "coco",
        "yolo",
        "yolo",
        "voc",
    ]
    assert (
        dataset_splits(tmp_path / "voc")
        == dataset_splits(tmp_path / "yolo")
        == dataset_splits(shapes)
        == ["train", "val"]
    )
    (tmp_path / "odd" / "labels").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"has images/ and labels/: add a data\.yaml"):
        detect_layout(tmp_path / "odd")
    with pytest.raises(FileNotFoundError, match="make a dataset with `sightkit data synth shapes"):
        detect_layout(tmp_path / "missing")


def test_coco_to_yolo_to_coco_keeps_images_and_boxes(shapes: Path, tmp_path: Path) -> None:
    convert_dataset(shapes, tmp_path / "yolo", "yolo")
    convert_dataset(tmp_path / "yolo", tmp_path / "back", "coco")
    for split in ("train", "val"):
        original = json.loads((shapes / "annotations" / f"{split}.json").read_text())
        back = json.loads((tmp_path / "back" / "annotations" / f"{split}.json").read_text())
        # Six decimals of a 64-pixel side: 64e-6 / 2 pixels at most.
        _assert_same(original, back, atol=1e-4)
        assert [(c["id"], c["name"]) for c in back["categories"]] == [
            (c["id"], c["name"]) for c in original["categories"]
        ]
        for image in back["images"]:  # the images are there, byte for byte
            source = shapes / "images" / Path(image["file_name"]).name
            assert (tmp_path / "back" / "images" / image["file_name"]).read_bytes() == source.read_bytes()


def test_coco_to_voc_to_coco_keeps_boxes_exactly(shapes: Path, tmp_path: Path) -> None:
    convert_dataset(shapes, tmp_path / "voc", "voc", link=False)
    for split in ("train", "val"):
        original = json.loads((shapes / "annotations" / f"{split}.json").read_text())
        coco, images = load_split(tmp_path / "voc", split)
        assert images == tmp_path / "voc" / "JPEGImages"
        _assert_same(original, coco, atol=0)  # integer boxes are written exactly (1-based, inclusive)


def test_pose_round_trip_through_yolo(people: Path, tmp_path: Path) -> None:
    convert_dataset(people, tmp_path / "yolo", "yolo")
    for split in ("train", "val"):
        original = json.loads((people / "annotations" / f"{split}.json").read_text())
        coco, _ = load_split(tmp_path / "yolo", split)
        _assert_same(original, coco, atol=1e-3)
        assert coco["categories"][0]["keypoints"] == original["categories"][0]["keypoints"]
        assert coco["categories"][0]["skeleton"] == original["categories"][0]["skeleton"]
    with pytest.raises(ValueError, match="VOC has no keypoints"):
        convert_dataset(people, tmp_path / "voc", "voc")


def test_every_layout_gives_the_same_training_targets(shapes: Path, people: Path, tmp_path: Path) -> None:
    convert_dataset(shapes, tmp_path / "yolo", "yolo")
    convert_dataset(shapes, tmp_path / "voc", "voc")
    reference = open_detection_dataset(shapes, "train")
    for data in (tmp_path / "yolo" / "data.yaml", tmp_path / "voc"):
        dataset = open_detection_dataset(data, "train")
        assert len(dataset) == len(reference)
        # YOLO keeps the category ids; VOC has none, so its classes are numbered in name order.
        assert sorted(dataset.category_map.names) == sorted(reference.category_map.names)
        for index in range(len(reference)):
            (image, target), (want_image, want) = dataset[index], reference[index]
            assert torch.equal(image, want_image)
            names = [dataset.category_map.names[k] for k in target["labels"].tolist()]
            assert names == [reference.category_map.names[k] for k in want["labels"].tolist()]
            torch.testing.assert_close(target["boxes"], want["boxes"], atol=1e-4, rtol=0)
    assert (
        open_detection_dataset(tmp_path / "yolo", "val").category_map
        == open_detection_dataset(shapes, "val").category_map
    )
    convert_dataset(people, tmp_path / "pose", "yolo")
    poses, want_poses = (
        open_detection_dataset(tmp_path / "pose", "val", keypoints=True),
        open_detection_dataset(people, "val", keypoints=True),
    )
    torch.testing.assert_close(poses[0][1]["keypoints"], want_poses[0][1]["keypoints"], atol=1e-3, rtol=0)
    assert torch.equal(poses[0][1]["keypoints_visibility"], want_poses[0][1]["keypoints_visibility"])
    with pytest.raises(ValueError, match="Pascal VOC dataset, which has no keypoints"):
        open_detection_dataset(tmp_path / "voc", "train", keypoints=True)
    with pytest.raises(FileNotFoundError, match=r"no split 'test' in .*splits: \['train', 'val'\]"):
        open_detection_dataset(tmp_path / "yolo", "test")


def test_the_converted_json_is_cached_until_a_label_changes(shapes: Path, tmp_path: Path) -> None:
    convert_dataset(shapes, tmp_path / "yolo", "yolo", link=False)
    images, first = dataset_annotations(tmp_path / "yolo", "val")
    assert images == tmp_path / "yolo" and first.parent == tmp_path / "cache" / "datasets"
    cached = json.loads(first.read_text())
    first.write_text(json.dumps({**cached, "marker": 1}))
    assert dataset_annotations(tmp_path / "yolo", "val")[1] == first
    assert json.loads(first.read_text())["marker"] == 1  # read from the cache, not converted again
    (label,) = (tmp_path / "yolo" / "labels" / "val").glob("*.txt")
    label.write_text("0 0.5 0.5 0.25 0.25\n")
    _, second = dataset_annotations(tmp_path / "yolo", "val")
    assert second != first
    converted = json.loads(second.read_text())
    (annotation,), (image,) = converted["annotations"], converted["images"]
    assert annotation["category_id"] == 1 and annotation["bbox"][2] == pytest.approx(0.25 * image["width"])


def test_check_points_at_bad_label_lines_and_xml_objects(shapes: Path, tmp_path: Path) -> None:
    convert_dataset(shapes, tmp_path / "yolo", "yolo", link=False)
    label = sorted((tmp_path / "yolo" / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\n0 0.9 0.5 0.4 0.2\n")  # a bad class; a box past x=1
    lines = len(label.read_text().splitlines())
    (tmp_path / "yolo" / "images" / "train" / "000001.png").write_bytes(b"not a png")
    report = check_dataset(tmp_path / "yolo", progress=False)
    found = {(p.kind, Path(p.file).name, p.record) for p in report.problems}
    assert found == {
        ("bad_label", label.name, f"line {lines - 1}"),
        ("box_outside", label.name, f"line {lines}"),
        ("corrupt_image", "000001.png", ""),
    }
    convert_dataset(shapes, tmp_path / "voc", "voc", link=False)
    xml = tmp_path / "voc" / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text().replace("<width>", "<width>1"))  # the XML now says the image is wider
    (tmp_path / "voc" / "Annotations" / "000003.xml").write_text("<annotation><filename>")
    report = check_dataset(tmp_path / "voc", progress=False)
    found = {(p.kind, Path(p.file).name) for p in report.problems}
    assert found == {("size_mismatch", "000002.png"), ("bad_label", "000003.xml")}


def test_cli_convert_and_check(shapes: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["data", "convert", str(shapes), f"out={tmp_path / 'y'}", "format=yolo", "splits=[val]"]
    )
    assert result.exit_code == 0, result.output
    assert "converted coco" in result.output and (tmp_path / "y" / "data.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "y" / "images").iterdir()) == ["val"]
    checked = runner.invoke(app, ["data", "check", str(tmp_path / "y")])
    assert checked.exit_code == 0 and "no problems in 1 images" in checked.output
    again = runner.invoke(app, ["data", "convert", str(shapes), f"out={tmp_path / 'y'}", "format=yolo"])
    assert again.exit_code == 2 and "must be a new or empty folder" in again.output
    wrong = runner.invoke(app, ["data", "convert", str(shapes), f"out={tmp_path / 'z'}", "format=yaml"])
    assert wrong.exit_code == 2 and "format: coco | yolo | voc" in wrong.output


def _deepforest_wheel() -> Path | None:
    named = os.environ.get("SIGHTKIT_DEEPFOREST_WHEEL")
    found = [Path(named)] if named else sorted(Path("runs").glob("**/deepforest-*.whl"))
    return found[-1] if found and found[-1].is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_deepforest_wheel() is None, reason="no deepforest wheel ($SIGHTKIT_DEEPFOREST_WHEEL or runs/)")
def test_deepforest_voc_sample_round_trips(tmp_path: Path) -> None:
    """Real aerial tree-crown VOC files: VOC -> COCO equals voc_to_coco, and VOC -> YOLO -> COCO keeps every box."""
    voc = tmp_path / "voc"
    with zipfile.ZipFile(_deepforest_wheel()) as archive:
        for name in archive.namelist():
            if name.startswith("deepforest/data/") and name.endswith(".xml"):
                xml = archive.read(name).decode()
                image = xml.split("<filename>")[1].split("<")[0]
                for folder, data in (
                    ("Annotations", xml.encode()),
                    ("JPEGImages", archive.read(f"deepforest/data/{image}")),
                ):
                    (voc / folder).mkdir(parents=True, exist_ok=True)
                    (voc / folder / (Path(name).name if folder == "Annotations" else image)).write_bytes(data)
    original, _ = load_split(voc, "all")
    assert len(original["images"]) >= 4 and len(original["annotations"]) > 100
    convert_dataset(voc, tmp_path / "yolo", "yolo")
    back, _ = load_split(tmp_path / "yolo", "all")
    _assert_same(original, back, atol=1e-2)
    convert_dataset(tmp_path / "yolo", tmp_path / "voc2", "voc")
    again, _ = load_split(tmp_path / "voc2", "all")
    _assert_same(original, again, atol=1e-2)
    assert check_dataset(tmp_path / "yolo", progress=False, decode=False).ok


def test_coco_own_file_names_and_split_folders(shapes: Path, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    val = json.loads((shapes / "annotations" / "val.json").read_text())
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    (root / "annotations" / "captions_val2017.json").write_text("{}")
    (root / "val2017").mkdir()
    for image in val["images"]:
        (root / "val2017" / image["file_name"]).write_bytes((shapes / "images" / image["file_name"]).read_bytes())
    assert dataset_splits(root) == ["val2017"]
    assert dataset_annotations(root, "val2017") == (root / "val2017", root / "annotations" / "instances_val2017.json")
    dataset, reference = open_detection_dataset(root, "val2017"), open_detection_dataset(shapes, "val")
    assert torch.equal(dataset[0][0], reference[0][0])
    torch.testing.assert_close(dataset[0][1]["boxes"], reference[0][1]["boxes"])
