"""The segmentation task: scoring at the original mask resolution, the collate and criterion
the trainer gets, mask pictures, weights metadata, and the CLI end to end (train, eval,
predict, export) in a subprocess on a tiny synthetic dataset."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightkit.data import synthesize_shapes
from sightkit.engine.checkpoint import save_weights
from sightkit.losses import SegmentationLoss
from sightkit.tasks.segment import (
    SegmentCollate,
    SegmentConfig,
    SegmentCriterion,
    SegmentEvaluate,
    check_model,
    labels_at,
    load_segmenter,
    train,
)
from tests.cli_run import run_sightkit


def test_labels_at_crops_the_padding_and_resizes_to_the_original() -> None:
    # A 2 x 2 image padded to 4 x 4; its logits favour class 1 in the left column and
    # class 0 in the right one; the padding favours class 2 and must not leak in.
    logits = torch.zeros(3, 4, 4)
    logits[2] = 10.0
    logits[1, :2, 0] = 20.0
    logits[0, :2, 1] = 20.0
    labels = labels_at(logits, (2, 2), (4, 6))
    assert labels.tolist() == [[1, 1, 1, 0, 0, 0]] * 4


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are fixed: class 1 on the left half of each padded batch, 0 elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(images.shape[0], 2, *images.shape[-2:])
        logits[:, 1, :, : images.shape[-1] // 2] = 1.0
        return logits + self.weight


def test_evaluate_scores_at_the_original_resolution() -> None:
    # One 32 x 32 (resized) image whose original mask is 8 x 8, left half class 1: the
    # prediction, cropped and resized to 8 x 8, is exactly right.
    original = torch.zeros(8, 8, dtype=torch.int64)
    original[:, :4] = 1
    sample = (torch.zeros(3, 32, 32), {"mask": torch.zeros(32, 32, dtype=torch.int64), "orig_mask": original})
    loader = [SegmentCollate()([sample])]
    metrics = SegmentEvaluate(["background", "thing"])(_Fixed(), loader)
    assert metrics == {"mIoU": 1.0, "pixel_accuracy": 1.0, "mean_accuracy": 1.0}
    # Without original masks the batch masks are scored as they are (all background here).
    loader = [SegmentCollate()([(sample[0], {"mask": sample[1]["mask"]})])]
    metrics = SegmentEvaluate(["background", "thing"])(_Fixed(), loader)
    assert metrics["pixel_accuracy"] == 0.5 and metrics["mIoU"] == pytest.approx(0.25)


def test_collate_and_criterion_for_the_trainer() -> None:
    samples = [(torch.randn(3, 20, 30), {"mask": torch.randint(0, 3, (20, 30))}) for _ in range(2)]
    images, targets = SegmentCollate(ignore_index=255)(samples)
    assert images.shape == (2, 3, 32, 32) and (targets["masks"][:, 20:] == 255).all()
    logits = torch.randn(2, 3, 32, 32)
    loss = SegmentationLoss(dice_weight=0.5)
    criterion = SegmentCriterion(loss)
    assert criterion.weight_dict == {"loss_ce": 1.0, "loss_dice": 0.5}
    values = criterion(logits, targets)
    torch.testing.assert_close(values["loss_ce"], loss(logits, targets["masks"])["loss_ce"])


def test_load_segmenter_refuses_other_tasks(tmp_path: Path) -> None:
    path = tmp_path / "detector.safetensors"
    save_weights(torch.nn.Linear(2, 2), path, {"task": "detect", "model": "detr_r18_tiny"})
    with pytest.raises(ValueError, match="not written by `sightkit train segment`"):
        load_segmenter(path)


@pytest.mark.slow
def test_cli_train_eval_predict_export(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    synthesize_shapes(out=str(data), images=6, size=64, val_fraction=0.34, progress=False)
    run = tmp_path / "run"
    result = run_sightkit(
        "train", "segment", f"data={data}", f"out={run}", "steps=2", "batch=2", "imgsz=64", "upsample=nearest",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    weights = run / "last.safetensors"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"][-1] == 2
    assert 0 <= [r for r in records if r["kind"] == "val"][-1]["mIoU"] <= 1
    segmenter = load_segmenter(weights)
    assert segmenter.classes == ["background", "circle", "square", "triangle", "star", "hexagon"]
    assert segmenter.model.upsample_mode == "nearest"

    eval_out = f"out={tmp_path / 'eval'}"
    result = run_sightkit("eval", "segment", f"weights={weights}", f"data={data}", eval_out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"mIoU", "pixel_accuracy", "mean_accuracy"} and 0 <= metrics["mIoU"] <= 1
    assert len(json.loads((tmp_path / "eval" / "per_class.json").read_text())) == 6
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 0

    pred = tmp_path / "pred"
    result = run_sightkit(
        "predict", "segment", f"weights={weights}", f"source={data / 'images'}", f"out={pred}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    predictions = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6
    from faster_coco_eval.core import mask as coco_mask

    for record in predictions:
        image = np.asarray(Image.open(record["path"]))
        assert (pred / f"{Path(record['path']).stem}.jpg").is_file()
        areas = [coco_mask.decode({**m, "counts": m["counts"].encode()}).sum() for m in record["masks"]]
        assert all(m["size"] == list(image.shape[:2]) for m in record["masks"])
        assert sum(areas) == image.shape[0] * image.shape[1]  # every pixel in exactly one class

    onnx = tmp_path / "model.onnx"
    result = run_sightkit("export", "onnx", f"weights={weights}", f"out={onnx}", "imgsz=64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("max |difference|")[1].split()[0]) < 1e-4
    # The height and width are dynamic (multiples of 32).
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, 96, 64)
    (logits,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), segmenter.model(images), atol=1e-4, rtol=1e-4)


def test_cli_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    result = run_sightkit("train", "segment", "upsample=linear", cwd=tmp_path)
    assert result.returncode == 2 and "upsample must be one of" in result.stderr


def test_model_and_data_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'detr_r18_tiny' is not a segment model; choose one of .*unet_r18_tiny"):
        check_model("detr_r18_tiny")
    with pytest.raises(ValueError, match="model='unet' is not a segment model"):
        check_model("unet")
    with pytest.raises(FileNotFoundError, match=r"no split 'train'"):
        train(SegmentConfig(data=str(tmp_path), out=str(tmp_path / "run")))
