"""The detection task: DETR collation, weights metadata and loading, and the CLI end to end
(train, eval, predict, export) in a subprocess on a tiny synthetic dataset."""

import json
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from typer.testing import CliRunner

from sightkit.cli.app import app
from sightkit.data.synthetic.shapes import synthesize_shapes
from sightkit.engine.checkpoint import save_weights
from sightkit.tasks.detect import DetrCollate, dataset_files, load_detector
from tests.cli_run import run_sightkit


def test_collate_normalises_boxes_by_the_unpadded_size() -> None:
    """Two images of different sizes: each image's boxes are divided by its own (w, h), and
    the padding mask is True exactly outside each image."""
    samples = []
    for (h, w), box in (((40, 80), [8.0, 4.0, 48.0, 24.0]), ((60, 30), [0.0, 0.0, 30.0, 60.0])):
        target = {
            "boxes": tv_tensors.BoundingBoxes([box], format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([1]),
            "image_id": 7,
            "orig_size": torch.tensor([h * 2, w * 2]),
        }
        samples.append((torch.rand(3, h, w), target))
    inputs, targets = DetrCollate(size_divisible=32)(samples)
    assert inputs["images"].shape == (2, 3, 64, 96)
    # Image 0: box centre (28, 14), size (40, 20) in an 80 x 40 image.
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[28 / 80, 14 / 40, 40 / 80, 20 / 40]]))
    torch.testing.assert_close(targets[1]["boxes"], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    mask = inputs["mask"]
    assert not mask[0, :40, :80].any() and mask[0, 40:].all() and mask[0, :, 80:].all()
    assert not mask[1, :60, :30].any() and mask[1, :, 30:].all()
    assert targets[1]["orig_size"].tolist() == [120, 60]


def test_dataset_files_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; make a dataset with `sightkit data synth"):
        dataset_files(tmp_path / "nothing", "train")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"split 'val'.*splits: \['train'\]"):
        dataset_files(tmp_path, "val")


def test_load_detector_refuses_foreign_weights(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_weights(torch.nn.Linear(2, 2), path, {"task": "classify"})
    with pytest.raises(ValueError, match="not written by `sightkit train detect`"):
        load_detector(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_detector(tmp_path / "missing.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_detector(tmp_path / "broken.safetensors")


@pytest.mark.slow
def test_cli_train_eval_predict_export(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    synthesize_shapes(out=str(data), images=6, size=96, val_fraction=0.34, progress=False)
    run = tmp_path / "run"
    common = ["imgsz=96", "max_size=128"]
    result = run_sightkit("train", "detect", f"data={data}", f"out={run}", "steps=2", "batch=2", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    weights = run / "last.safetensors"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"][-1] == 2
    assert "AP" in [r for r in records if r["kind"] == "val"][-1]
    assert load_detector(weights).classes == ["circle", "square", "triangle", "star", "hexagon"]

    eval_out = f"out={tmp_path / 'eval'}"
    result = run_sightkit("eval", "detect", f"weights={weights}", f"data={data}", eval_out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AP75", "AR100"} and -1 <= metrics["AP"] <= 1
    assert (tmp_path / "eval" / "pr_curve.png").stat().st_size > 0

    images = data / "images"
    pred = tmp_path / "pred"
    result = run_sightkit(
        "predict", "detect", f"weights={weights}", f"source={images}", f"out={pred}", "conf=0", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all((pred / f"{Path(r['path']).stem}.jpg").is_file() for r in records)
    coco = json.loads((pred / "predictions.json").read_text())
    assert len(coco) == sum(len(r["boxes"]) for r in records)
    for record in records:
        assert set(record["names"]) <= {"circle", "square", "triangle", "star", "hexagon"}
        for x1, y1, x2, y2 in record["boxes"]:
            assert x1 <= x2 and y1 <= y2

    onnx = tmp_path / "model.onnx"
    result = run_sightkit("export", "onnx", f"weights={weights}", f"out={onnx}", "imgsz=64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    difference = float(result.stdout.split("max |difference|")[1].split()[0])
    assert difference < 1e-4


def test_cli_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in (
        (["train", "detect", "epohcs=3"], "did you mean 'epochs'"),
        (["train", "detect", f"data={tmp_path / 'none'}"], "does not exist"),
        (["eval", "detect", f"weights={tmp_path / 'w.safetensors'}"], "does not exist"),
        (["train", "segmentt"], "TASK must be one of"),
        (["export", "onnx"], "weights= is required"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert message in result.output
