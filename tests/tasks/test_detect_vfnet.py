"""The detection task with a dense detector: VFNet's collation keeps absolute xyxy boxes, and
``sightkit train|eval|predict detect model=vfnet_r18_tiny`` and ``sightkit export onnx`` run
end to end in a subprocess on a tiny synthetic dataset, and the exported network equals
PyTorch's at another input size."""

import json
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from sightkit.config import ConfigError, build_config
from sightkit.data.synthetic.shapes import synthesize_shapes
from sightkit.engine import save_weights
from sightkit.losses import SetCriterion, VFNetCriterion
from sightkit.models import create_model
from sightkit.tasks.common import build_model
from sightkit.tasks.detect import (
    DenseCollate,
    DetectConfig,
    DetrCollate,
    collate_for,
    load_detector,
)
from tests.cli_run import run_sightkit


def test_dense_collate_keeps_absolute_xyxy_boxes() -> None:
    h, w = 40, 80
    target = {
        "boxes": tv_tensors.BoundingBoxes([[8.0, 4.0, 48.0, 24.0]], format="XYXY", canvas_size=(h, w)),
        "labels": torch.tensor([1]),
        "image_id": 7,
        "orig_size": torch.tensor([h * 2, w * 2]),
    }
    inputs, targets = DenseCollate(size_divisible=32)([(torch.rand(3, h, w), target)])
    assert inputs["images"].shape == (1, 3, 64, 96)
    assert inputs["mask"][0, :40, :80].logical_not().all() and inputs["mask"][0, 40:].all()
    assert targets[0]["boxes"].tolist() == [[8.0, 4.0, 48.0, 24.0]] and type(targets[0]["boxes"]) is torch.Tensor
    assert targets[0]["image_id"] == 7 and targets[0]["orig_size"].tolist() == [80, 160]


def test_the_model_family_picks_collation_and_criterion() -> None:
    vfnet = create_model("vfnet_r18_tiny", num_classes=5, cls_loss="focal")
    assert isinstance(collate_for(vfnet), DenseCollate)
    criterion = vfnet.build_criterion()
    assert isinstance(criterion, VFNetCriterion) and criterion.cls_loss == "focal"
    detr = create_model("detr_r18_tiny", num_classes=5)
    assert isinstance(collate_for(detr), DetrCollate)
    assert isinstance(detr.build_criterion(eos_coef=0.1), SetCriterion)


@pytest.mark.slow
def test_model_args_reach_the_builder_and_the_weights_file(tmp_path: Path) -> None:
    config = build_config(DetectConfig, ["model_args={cls_loss: focal, refine: false, gradient_mul: 0.2}"])
    assert config.model_args == {"cls_loss": "focal", "refine": False, "gradient_mul": 0.2}
    assert build_config(DetectConfig).model_args == {}
    with pytest.raises(ConfigError, match=r"model_args must be a mapping such as .* got refine:false"):
        build_config(DetectConfig, ["model_args=refine:false"])
    unfit = r"settings \{'num_classes': 2, 'colour': 'red'\} do not fit model='vfnet_r18_tiny'.*'colour'"
    with pytest.raises(ValueError, match=unfit):
        build_model("detect", "vfnet_r18_tiny", num_classes=2, colour="red")
    with pytest.raises(ValueError, match=r"model='rle_r18_tiny' is not a detect model; choose one of .*vfnet_r18_tiny"):
        build_model("detect", "rle_r18_tiny", num_classes=2)
    # The ablation without refinement has other parameters: the weights file must rebuild it
    # with the same overrides, or loading them strictly fails.
    model = build_model("detect", "vfnet_r18_tiny", num_classes=2, refine=False, cls_loss="focal")
    assert not model.head.refine and model.cls_loss == "focal"
    metadata = {
        "task": "detect", "model": "vfnet_r18_tiny", "model_args": json.dumps({"refine": False, "cls_loss": "focal"}),
        "classes": json.dumps(["a", "b"]), "category_ids": json.dumps([1, 2]), "imgsz": "64", "max_size": "96",
        "mean": json.dumps([0.5] * 3), "std": json.dumps([0.25] * 3),
    }  # fmt: skip
    save_weights(model, tmp_path / "w.safetensors", metadata)
    loaded = load_detector(tmp_path / "w.safetensors").model
    assert not loaded.head.refine and loaded.cls_loss == "focal"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_cli_train_eval_predict_export_vfnet(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    synthesize_shapes(out=str(data), images=4, size=64, val_fraction=0.5, progress=False)
    run = tmp_path / "run"
    result = run_sightkit(
        "train", "detect", "model=vfnet_r18_tiny", f"data={data}", f"out={run}", "steps=2", "batch=2",
        "imgsz=64", "max_size=96", "lr=1e-3", "plot=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    weights = run / "last.safetensors"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert train_records[-1]["step"] == 2
    assert {"loss_cls", "loss_bbox", "loss_bbox_refine"} <= set(train_records[-1])
    assert "AP" in [r for r in records if r["kind"] == "val"][-1]
    assert load_detector(weights).name == "vfnet_r18_tiny"

    eval_out = f"out={tmp_path / 'eval'}"
    result = run_sightkit("eval", "detect", f"weights={weights}", f"data={data}", eval_out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AR100"} and -1 <= metrics["AP"] <= 1

    pred = tmp_path / "pred"
    result = run_sightkit(
        "predict", "detect", f"weights={weights}", f"source={data / 'images'}", f"out={pred}", "conf=0", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all((pred / f"{Path(r['path']).stem}.jpg").is_file() for r in records)
    for record in records:
        for (x1, y1, x2, y2), score in zip(record["boxes"], record["scores"], strict=True):
            assert x1 < x2 and y1 < y2 and score > 0.05  # VFNet's score threshold

    onnx = tmp_path / "model.onnx"
    result = run_sightkit("export", "onnx", f"weights={weights}", f"out={onnx}", "imgsz=64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "opset 19" in result.stdout  # DeformConv is not in opset 18
    difference = float(result.stdout.split("max |difference|")[1].split()[0])
    assert difference < 1e-4
    # One input, final detections out; height and width are dynamic: at 90 x 70 (padded to 96 x 96 inside
    # the graph) onnxruntime equals the deployed module run by PyTorch.
    import onnxruntime

    from sightkit.models.deploy import DeployDetector

    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    images = torch.randn(1, 3, 90, 70)
    boxes, scores, labels = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = DeployDetector.for_model(load_detector(weights).model.eval())(images)
    torch.testing.assert_close(torch.from_numpy(boxes), expected[0], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(scores), expected[1], atol=1e-4, rtol=1e-4)
    assert torch.equal(torch.from_numpy(labels), expected[2])
