"""The detection task with DINO: the collation hands the targets to the model, the task picks
DINO's criterion and sigmoid postprocess, and the CLI trains, evaluates, predicts and exports
dino_r18_tiny end to end in a subprocess on a tiny synthetic dataset."""

import json
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from sightkit.data.synthetic.shapes import synthesize_shapes
from sightkit.losses import DINOCriterion, SetCriterion
from sightkit.models import create_model, detr_postprocess, dino_postprocess
from sightkit.tasks.detect import DenseCollate, DetrCollate, collate_for
from tests.cli_run import run_sightkit


def test_each_family_declares_its_parts() -> None:
    dino, detr = create_model("dino_r18_tiny", num_classes=3), create_model("detr_r18_tiny", num_classes=3)
    vfnet = create_model("vfnet_r18_tiny", num_classes=3)
    criterion = dino.build_criterion()
    assert isinstance(criterion, DINOCriterion) and criterion.aux_layers == 2
    detr_criterion = detr.build_criterion(eos_coef=0.25)
    assert isinstance(detr_criterion, SetCriterion) and detr_criterion.eos_coef == 0.25
    assert detr_criterion.aux_layers == len(detr.transformer.decoder_layers) - 1
    assert dino.postprocess is dino_postprocess and detr.postprocess is detr_postprocess
    assert dino.reads_targets and not detr.reads_targets and not vfnet.reads_targets
    assert detr.no_object_class and not dino.no_object_class and not vfnet.no_object_class
    assert isinstance(collate_for(vfnet), DenseCollate)
    assert collate_for(dino).with_targets and not collate_for(detr).with_targets


def test_collate_hands_the_targets_to_the_model() -> None:
    target = {
        "boxes": tv_tensors.BoundingBoxes([[8.0, 4.0, 48.0, 24.0]], format="XYXY", canvas_size=(40, 80)),
        "labels": torch.tensor([1]),
        "image_id": 3,
        "orig_size": torch.tensor([40, 80]),
    }
    inputs, targets = DetrCollate(with_targets=True)([(torch.rand(3, 40, 80), target)])
    assert inputs["targets"] is targets
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[28 / 80, 14 / 40, 40 / 80, 20 / 40]]))
    assert "targets" not in DetrCollate()([(torch.rand(3, 40, 80), target)])[0]


@pytest.mark.slow
def test_cli_train_eval_predict_export_dino(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    synthesize_shapes(out=str(data), images=6, size=96, val_fraction=0.34, progress=False)
    run = tmp_path / "run"
    common = ["model=dino_r18_tiny", "imgsz=96", "max_size=128"]
    result = run_sightkit("train", "detect", f"data={data}", f"out={run}", "steps=2", "batch=2", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"][-1]
    assert train["step"] == 2 and train["loss_vfl_dn_2"] > 0  # the denoising queries trained
    assert "AP" in [r for r in records if r["kind"] == "val"][-1]
    weights = run / "last.safetensors"

    eval_out = f"out={tmp_path / 'eval'}"
    result = run_sightkit("eval", "detect", f"weights={weights}", f"data={data}", eval_out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AR100"} and -1 <= metrics["AP"] <= 1

    pred = tmp_path / "pred"
    result = run_sightkit(
        "predict",
        "detect",
        f"weights={weights}",
        f"source={data / 'images'}",
        f"out={pred}",
        "conf=0",
        "top_k=7",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    # Sigmoid top-k over queries x classes: exactly top_k detections per image at conf=0.
    assert len(records) == 6 and all(len(record["boxes"]) == 7 for record in records)
    scores = records[0]["scores"]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)

    onnx = tmp_path / "model.onnx"
    result = run_sightkit("export", "onnx", f"weights={weights}", f"out={onnx}", "imgsz=64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("max |difference|")[1].split()[0]) < 1e-4
