"""The pose task: the criterion by hand, person rescoring, model and weights checks, both
heads overfitting a few synthetic people to OKS AP >= 0.9, and the CLI end to end (train,
eval, predict, export) in a subprocess."""

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from sightkit.cli import app
from sightkit.data.synthetic.people import synthesize_people
from sightkit.engine.checkpoint import save_weights
from sightkit.losses import rle_loss
from sightkit.models import create_model
from sightkit.ops import render_heatmaps
from sightkit.tasks.common import build_model
from sightkit.tasks.pose import (
    PoseConfig,
    PoseCriterion,
    PoseEvalConfig,
    evaluate,
    load_pose,
    person_scores,
    train,
)
from tests.cli_run import run_sightkit

SIZE = (64, 48)


def crop_targets() -> dict[str, torch.Tensor]:
    keypoints = torch.zeros(2, 17, 3)
    keypoints[..., 0], keypoints[..., 1] = 24.0 + 4.8, 32.0  # (0.1, 0) from the centre, normalised
    keypoints[0, :10, 2] = 2
    keypoints[1, 3, 2] = 1
    keypoints[1, 4, :2] = 1000.0  # unlabelled: anything goes
    return {"keypoints": keypoints}


def test_l1_criterion_by_hand() -> None:
    model = create_model("regress_r18_tiny")
    criterion = PoseCriterion(model, SIZE)
    losses = criterion({"coords": torch.zeros(2, 17, 2, requires_grad=True)}, crop_targets())
    assert set(losses) == {"loss_l1"}
    torch.testing.assert_close(losses["loss_l1"], torch.tensor(0.1))  # |0.1| + |0| per labelled keypoint


def test_heatmap_criterion_by_hand() -> None:
    model = create_model("heatmap_r18_tiny")
    criterion = PoseCriterion(model, SIZE, heatmap_sigma=1.5)
    targets = crop_targets()
    goal = render_heatmaps(targets["keypoints"] / 2, (32, 24), sigma=1.5)  # stride 2
    assert criterion({"heatmaps": goal}, targets)["loss_heatmap"].item() == 0.0
    weight = (targets["keypoints"][..., 2] > 0).float()[..., None, None]
    expected = 0.5 * (goal.square() * weight).mean()
    torch.testing.assert_close(criterion({"heatmaps": torch.zeros_like(goal)}, targets)["loss_heatmap"], expected)


def test_rle_criterion_is_rle_loss_on_normalised_keypoints() -> None:
    model = create_model("rle_r18_tiny")
    criterion = PoseCriterion(model, SIZE, rle_form="official")
    targets = crop_targets()
    coords = torch.rand(2, 17, 2) - 0.5
    sigma = torch.rand(2, 17, 2) * 0.5 + 0.1
    loss = criterion({"coords": coords, "sigma": sigma}, targets)["loss_rle"]
    normalised = targets["keypoints"][..., :2] / torch.tensor([48.0, 64.0]) - 0.5
    weight = (targets["keypoints"][..., 2] > 0).float()
    torch.testing.assert_close(loss, rle_loss(coords, sigma, normalised, model.flow, weight, form="official"))
    loss.backward()
    assert all(p.grad is not None for p in model.flow.parameters())  # the flow trains with the model


def test_person_scores_rescore_by_confident_keypoints() -> None:
    keypoint_scores = torch.tensor([[0.9, 0.7, 0.1, 0.0], [0.1, 0.1, 0.15, 0.05]])
    scores = person_scores(torch.tensor([0.5, 1.0]), keypoint_scores)
    torch.testing.assert_close(scores, torch.tensor([0.5 * 0.8, 0.1]))  # none above 0.2: the plain mean


def test_models_and_weights_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model='detr_r18_tiny' is not a pose model; choose one of .*rle_r18_tiny"):
        build_model("pose", "detr_r18_tiny", num_keypoints=17)
    with pytest.raises(ValueError, match="model='rle_r18' is not a pose model"):
        build_model("pose", "rle_r18", num_keypoints=17)
    with pytest.raises(ValueError, match="model must be a pose model"):
        PoseCriterion(torch.nn.Linear(2, 2), SIZE)
    path = tmp_path / "detector.safetensors"
    save_weights(torch.nn.Linear(2, 2), path, {"task": "detect", "model": "detr_r18_tiny"})
    with pytest.raises(ValueError, match="not written by `sightkit train pose`"):
        load_pose(path)


@pytest.fixture(scope="module")
def four_people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("people")
    synthesize_people(out=str(root), images=4, size=96, max_people=1, max_occluders=0, val_fraction=0.0, progress=False)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(("model", "steps", "lr"), [("rle_r18_tiny", 300, 3e-3), ("heatmap_r18_tiny", 60, 2e-3)])
def test_both_heads_overfit_a_few_people(four_people: Path, tmp_path: Path, model: str, steps: int, lr: float) -> None:
    """Four synthetic people, no augmentation: each head learns them to OKS AP >= 0.9 (the
    evaluation maps the crops' keypoints back to the images and runs COCO's keypoint AP).
    RLE needs more steps: its scale sigma must shrink to the sub-pixel errors before the
    residual term sharpens the locations (with 120 steps some initialisations stop at AP 0.5)."""
    config = PoseConfig(
        model=model,
        data=str(four_people),
        val_split="train",
        out=str(tmp_path / "run"),
        input_size=SIZE,
        epochs=0,
        steps=steps,
        batch=4,
        lr=lr,
        warmup_steps=0,
        weight_decay=0.0,
        scale_jitter=0.0,
        rotation=0.0,
        flip_prob=0.0,
        flip_test=False,  # trained without flips, the mirrored crops are unseen
        eval_every=steps,
        progress=False,
        plot=False,
    )
    metrics = train(config)
    assert metrics["AP"] >= 0.9, metrics
    assert metrics["PCK"] >= 0.9, metrics


@pytest.mark.slow
def test_cli_train_eval_predict_export(tmp_path: Path) -> None:
    data = tmp_path / "people"
    synthesize_people(out=str(data), images=4, size=96, max_people=2, val_fraction=0.5, progress=False)
    run = tmp_path / "run"
    result = run_sightkit(
        "train", "pose", "model=heatmap_r18_tiny", f"data={data}", f"out={run}", "steps=2", "batch=2",
        "input_size=[64,48]", "upsample=bilinear", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    weights = run / "last.safetensors"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "AP" in [r for r in records if r["kind"] == "val"][-1]
    loaded = load_pose(weights)  # the predictor that sightkit.load returns
    assert loaded.input_size == SIZE and loaded.keypoint_names[0] == "nose" and (1, 2) in loaded.flip_pairs

    eval_out = f"out={tmp_path / 'eval'}"
    result = run_sightkit("eval", "pose", f"weights={weights}", f"data={data}", eval_out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AR", "PCK", "EPE"} and -1 <= metrics["AP"] <= 1
    results = json.loads((tmp_path / "eval" / "keypoints.json").read_text())
    assert results and len(results[0]["keypoints"]) == 51
    assert len(json.loads((tmp_path / "eval" / "per_keypoint.json").read_text())) == 17

    # Detector boxes (in-process: the command line was exercised above): the ground-truth boxes
    # stand in for a detector's, with OKS-NMS on.
    val = json.loads((data / "annotations" / "val.json").read_text())
    detections = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.8} for a in val["annotations"]]
    (tmp_path / "boxes.json").write_text(json.dumps(detections))
    config = PoseEvalConfig(
        weights=str(weights), data=str(data), boxes=str(tmp_path / "boxes.json"), out=str(tmp_path / "eval_boxes")
    )
    with_boxes = evaluate(config, Console(file=io.StringIO()))
    assert "PCK" not in with_boxes and -1 <= with_boxes["AP"] <= 1

    # Boxes from a COCO results file as `sightkit predict detect` writes it (file_name, bbox xywh, score).
    image = data / "images" / val["images"][0]["file_name"]
    boxes = tmp_path / "people_boxes.json"
    rows = [
        {"file_name": image.name, "bbox": [10, 10, 50, 80], "score": 0.9},
        {"file_name": image.name, "bbox": [0, 0, 30, 40], "score": 1.0},
    ]
    boxes.write_text(json.dumps(rows))
    pred = tmp_path / "pred"
    result = run_sightkit(
        "predict", "pose", f"weights={weights}", f"source={image}", f"boxes={boxes}", f"out={pred}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    assert (pred / f"{image.stem}.jpg").is_file() and len(record["boxes"]) == 2
    assert len(record["keypoints"][0]) == 17 and record["boxes"][0] == [10, 10, 60, 90]

    onnx = tmp_path / "pose.onnx"
    result = run_sightkit("export", "onnx", f"weights={weights}", f"out={onnx}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("max |difference|")[1].split()[0]) < 1e-4


def test_cli_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    """In-process (the subprocess path is the detection task's test and the one above)."""
    runner = CliRunner()
    result = runner.invoke(app, ["train", "pose", "model=detr_r18_tiny", f"data={tmp_path}"])
    assert result.exit_code == 2 and "is not a dataset folder" in result.stderr
    result = runner.invoke(app, ["train", "pose", "input_sise=[64,48]"])
    assert result.exit_code == 2 and "did you mean 'input_size'" in result.stderr
    result = runner.invoke(app, ["eval", "pose", f"weights={tmp_path / 'none.safetensors'}"])
    assert result.exit_code == 2 and "does not exist" in result.stderr
