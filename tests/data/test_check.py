"""check_dataset finds each kind of problem planted in a small broken dataset, and passes a clean one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from sightkit.cli.data_check import check
from sightkit.data import check_dataset
from sightkit.data.check import PROBLEM_KINDS


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def save_truncated(image: Image.Image, path: Path) -> None:
    image.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def person(ann_id: int, keypoints: list[float], **extra: object) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": 2, "bbox": [2, 2, 20, 20], "keypoints": keypoints, **extra}


def box(ann_id: int, bbox: list, image_id: int = 1, category_id: int = 1) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox}


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A dataset folder with one of each problem, laid out as annotations/instances_train.json + images/train/."""
    images = tmp_path / "images" / "train"
    images.mkdir(parents=True)
    noise_image(32, 24).save(images / "ok.png")
    noise_image(40, 30).save(images / "size.png")
    save_truncated(noise_image(64, 64), images / "trunc.jpg")
    save_truncated(noise_image(64, 64), images / "trunc.png")
    (images / "text.png").write_text("not an image")
    coco = {
        "images": [
            {"id": 1, "file_name": "ok.png", "width": 32, "height": 24},
            {"id": 2, "file_name": "missing.png", "width": 8, "height": 8},
            {"id": 3, "file_name": "trunc.jpg", "width": 64, "height": 64},
            {"id": 4, "file_name": "text.png", "width": 8, "height": 8},
            {"id": 5, "file_name": "size.png", "width": 30, "height": 40},
            {"id": 1, "file_name": "ok.png", "width": 32, "height": 24},
            {"id": 7, "file_name": "ok.png", "width": "big", "height": 24},
            {"id": 8, "file_name": "trunc.png", "width": 64, "height": 64},
        ],
        "categories": [
            {"id": 1, "name": "shape"},
            {"id": 2, "name": "person", "keypoints": ["a", "b", "c"]},
            {"id": 2, "name": "again"},
        ],
        "annotations": [
            box(10, [1, 1, 10, 10]),
            box(11, [25, 5, 10, 5]),  # x2 = 35 > 32
            box(12, [5, 5, 0, 3]),
            box(13, [1, 1, 4, 4], category_id=99),
            box(14, [1, 1, 4, 4], image_id=777),
            box(10, [1, 1, 4, 4]),
            box(16, [1, 2, "3", 4]),
            person(17, [5, 5, 2, 6, 6, 2]),  # 2 keypoints, the category has 3
            person(18, [5, 5, 2, 6, 6, 3, 7, 7, 1]),
            person(19, [5, 5, 2, 50, 6, 2, 100, 100, 0]),  # only the labelled one is outside
            person(20, [5, 5, 2, 6, 6, 2, 0, 0, 0], num_keypoints=3),
            box(21, [0, 0, 32.3, 24]),  # within the default 0.5 px tolerance
            person(22, [5, 5, 2, 6, 6, 1, 0, 0, 0], num_keypoints=2),
            {"id": 23, "image_id": 1, "category_id": 1},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return tmp_path


def test_every_planted_problem_is_found_with_its_file_and_record(broken: Path) -> None:
    report = check_dataset(broken, progress=False)
    json_file = str(broken / "annotations" / "instances_train.json")
    images = broken / "images" / "train"
    assert report.sources == [(Path(json_file), images)]
    found = {(p.kind, p.file, p.record.split(" (")[0]) for p in report.problems}
    expected = {
        ("missing_file", str(images / "missing.png"), "image id=2"),
        ("corrupt_image", str(images / "trunc.jpg"), "image id=3"),
        ("corrupt_image", str(images / "trunc.png"), "image id=8"),
        ("corrupt_image", str(images / "text.png"), "image id=4"),
        ("size_mismatch", str(images / "size.png"), "image id=5"),
        ("duplicate_id", json_file, "image id=1"),
        ("bad_record", json_file, "image id=7"),
        ("duplicate_id", json_file, "category id=2"),
        ("box_outside", json_file, "annotation id=11"),
        ("empty_box", json_file, "annotation id=12"),
        ("unknown_category", json_file, "annotation id=13"),
        ("missing_image", json_file, "annotation id=14"),
        ("duplicate_id", json_file, "annotation id=10"),
        ("bad_box", json_file, "annotation id=16"),
        ("keypoint_count", json_file, "annotation id=17"),
        ("keypoint_visibility", json_file, "annotation id=18"),
        ("keypoint_outside", json_file, "annotation id=19"),
        ("keypoint_count", json_file, "annotation id=20"),
        ("bad_record", json_file, "annotation id=23"),
    }
    assert found == expected
    assert len(report.problems) == len(expected)
    assert not report.ok
    assert set(report.counts()) == set(PROBLEM_KINDS) - {"bad_json", "bad_label"}  # bad_label: YOLO and VOC only
    assert (report.images, report.annotations) == (8, 14)

    by_record = {p.record.split(" (")[0]: p for p in report.problems if p.file == json_file}
    assert "x2=35" in by_record["annotation id=11"].message
    assert "keypoints [1] have visibility [3]" in by_record["annotation id=18"].message
    assert "keypoints [1] at [(50, 6)]" in by_record["annotation id=19"].message
    assert "num_keypoints is 3 but 2 keypoints" in by_record["annotation id=20"].message
    assert "records #0 and #5" in by_record["image id=1"].message
    size = next(p for p in report.problems if p.kind == "size_mismatch")
    assert "the file is 40x30 but the JSON says 30x40" in size.message


def test_header_only_mode_misses_truncation_but_not_garbage(broken: Path) -> None:
    report = check_dataset(broken / "annotations" / "instances_train.json", decode=False, progress=False)
    corrupt = {Path(p.file).name for p in report.problems if p.kind == "corrupt_image"}
    assert corrupt == {"text.png"}
    assert not report.decoded


def test_tolerance_zero_reports_small_overshoot(broken: Path) -> None:
    report = check_dataset(broken, tolerance=0, progress=False)
    outside = {p.record.split(" (")[0] for p in report.problems if p.kind == "box_outside"}
    assert outside == {"annotation id=11", "annotation id=21"}


def write_clean(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    for index in range(6):
        noise_image(20 + index, 16, seed=index).save(root / "images" / f"{index}.jpg")
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 20 + i, "height": 16} for i in range(6)],
        "categories": [{"id": 3, "name": "person", "keypoints": ["nose", "tail"]}],
        "annotations": [
            {
                "id": 100 + i,
                "image_id": i,
                "category_id": 3,
                "bbox": [0, 0, 20 + i, 16],
                "keypoints": [1, 1, 2, 19 + i, 15, 1],
                "num_keypoints": 2,
            }
            for i in range(6)
        ],
    }
    (root / "train.json").write_text(json.dumps(coco))


def test_clean_dataset_passes(tmp_path: Path) -> None:
    write_clean(tmp_path)
    report = check_dataset(tmp_path, workers=2, progress=False)
    assert report.problems == []
    assert report.ok
    assert report.sources == [(tmp_path / "train.json", tmp_path / "images")]
    assert (report.images, report.annotations) == (6, 6)


def test_unreadable_json_is_reported_and_other_files_still_checked(tmp_path: Path) -> None:
    write_clean(tmp_path / "set")
    annotations = tmp_path / "set" / "annotations"
    annotations.mkdir()
    (tmp_path / "set" / "train.json").rename(annotations / "train.json")
    (annotations / "broken.json").write_text('{"images": [')
    (annotations / "wrong.json").write_text('{"images": {}}')
    report = check_dataset(tmp_path / "set", progress=False)
    assert [(p.kind, Path(p.file).name) for p in report.problems] == [
        ("bad_json", "broken.json"),
        ("bad_json", "wrong.json"),
    ]
    assert "'images' must be a list, got dict" in report.problems[1].message
    assert (report.images, report.annotations) == (6, 6)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="path not found"):
        check_dataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="path must be a COCO JSON file or a folder with annotations/"):
        check_dataset(tmp_path)
    write_clean(tmp_path)
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        check_dataset(tmp_path, workers=0)
    with pytest.raises(ValueError, match="tolerance must be a number >= 0"):
        check_dataset(tmp_path, tolerance=-1)
    with pytest.raises(FileNotFoundError, match="images must be a folder"):
        check_dataset(tmp_path, images=tmp_path / "no")


def test_table_lists_problems_up_to_the_limit(broken: Path) -> None:
    report = check_dataset(broken, progress=False)
    table = report.table(limit=5)
    assert table.row_count == 5
    assert table.caption == f"{len(report.problems) - 5} more problem(s) not shown"
    assert list(table.columns[0].cells) == [p.kind for p in report.problems[:5]]
    assert report.table().row_count == len(report.problems)


def run_check(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(check)
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_cli_exit_status_and_output(broken: Path, tmp_path: Path) -> None:
    code, output = run_check(str(broken), "limit=3", "workers=2")
    assert code == 1
    assert "19 problem(s) in 8 images, 14 annotations" in output
    assert "16 more problem(s) not shown" in output
    assert "missing_file: an image file named in the JSON does not exist" in output

    clean = tmp_path / "clean"
    write_clean(clean)
    code, output = run_check(str(clean / "train.json"), "decode=false")
    assert (code, "no problems" in output, "headers read" in output) == (0, True, True)

    code, output = run_check(str(clean), "limt=3")
    assert code == 2
    assert "unknown key 'limt'" in output and "did you mean 'limit'" in output
    code, output = run_check(str(tmp_path / "absent"))
    assert (code, "path not found" in output) == (2, True)


@pytest.mark.slow  # a fresh interpreter imports torch: 5-20 s
def test_real_command_line(broken: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    command = [sys.executable, "-m", "sightkit", "data", "check", str(broken), "limit=0"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "19 problem(s) in 8 images, 14 annotations" in result.stdout
    assert "more problem(s) not shown" not in result.stdout
    for kind in set(PROBLEM_KINDS) - {"bad_json", "bad_label"}:
        assert f"{kind}: {PROBLEM_KINDS[kind]}" in result.stdout
