"""``data=`` of the detection and pose commands takes COCO, ultralytics YOLO and Pascal VOC datasets."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sightkit.cli.app import app
from sightkit.data.formats import convert_dataset
from sightkit.data.synthetic.shapes import synthesize_shapes
from sightkit.tasks.common import dataset_files, read_metadata


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    coco = root / "coco"
    synthesize_shapes(out=str(coco), images=6, size=96, val_fraction=0.34, progress=False)
    convert_dataset(coco, root / "yolo", "yolo")
    convert_dataset(coco, root / "voc", "voc")
    return {"coco": coco, "yolo": root / "yolo" / "data.yaml", "voc": root / "voc"}


def test_every_layout_gives_the_same_annotations(layouts: dict[str, Path], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SIGHTKIT_CACHE", str(tmp_path / "cache"))

    def boxes(layout: str) -> list[tuple[str, str, list[float]]]:
        images, annotations = dataset_files(layouts[layout], "val")
        coco = json.loads(Path(annotations).read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        files = {i["id"]: Path(i["file_name"]).stem for i in coco["images"]}
        assert all((Path(images) / i["file_name"]).is_file() for i in coco["images"])
        return sorted(
            (files[a["image_id"]], names[a["category_id"]], [round(v, 1) for v in a["bbox"]])
            for a in coco["annotations"]
        )

    expected = boxes("coco")
    assert len(expected) > 0
    assert boxes("yolo") == expected
    assert boxes("voc") == expected


@pytest.mark.slow
def test_train_and_evaluate_from_a_yolo_data_yaml(layouts: dict[str, Path], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SIGHTKIT_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    run = tmp_path / "run"
    settings = ["imgsz=96", "max_size=128", "steps=1", "batch=2", f"out={run}"]
    result = runner.invoke(app, ["train", "detect", f"data={layouts['yolo']}", *settings])
    assert result.exit_code == 0, result.output
    classes = json.loads(read_metadata(run / "last.safetensors")["classes"])
    assert classes == ["circle", "square", "triangle", "star", "hexagon"]
    weights = run / "last.safetensors"
    result = runner.invoke(
        app, ["eval", "detect", f"weights={weights}", f"data={layouts['yolo']}", f"out={tmp_path / 'e'}"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50"}
