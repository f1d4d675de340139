"""The face task: a tiny IResNet trained briefly verifies held-out synthetic identities, the
CLI end to end (train, eval, export) in a subprocess, weights loading and metrics."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sightkit.data.synthetic.faces import synthesize_faces
from sightkit.engine.checkpoint import save_weights
from sightkit.tasks.face import FaceConfig, load_embedder, train, verification_metrics


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 training identities and 20 held-out ones (10 crops each), LFW pairs over the held-out."""
    out = tmp_path_factory.mktemp("faces")
    synthesize_faces(
        out=str(out), images=1, identities=40, test_identities=20, per_identity=10, crop=64, progress=False
    )
    return out / "recognition"


@pytest.mark.slow
def test_tiny_iresnet_verifies_held_out_identities(faces: Path, tmp_path: Path) -> None:
    # 32 x 32 crops, one block per stage, ArcFace with s = 32, m = 0.3: about 75 SGD steps.
    config = FaceConfig(
        model="iresnet_tiny", imgsz=32, data=str(faces), out=str(tmp_path / "run"), epochs=6, batch=32,
        scale=32.0, m2=0.3, warmup_steps=10, eval_every=0, progress=False, plot=False,
    )  # fmt: skip
    metrics = train(config)
    assert metrics["accuracy"] >= 0.95, metrics
    loaded = load_embedder(tmp_path / "run" / "best.safetensors")
    assert (loaded.name, loaded.imgsz) == ("iresnet_tiny", 32)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sightkit", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_cli_train_eval_export(faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _run(
        "train", "face", "model=mobilefacenet_tiny", "imgsz=32", f"data={faces}", f"out={run}", "steps=2", "batch=8",
        "progress=false", "plot=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    weights = run / "last.safetensors"
    result = _run(
        "eval", "face", f"weights={weights}", f"data={faces / 'test'}", f"pairs={faces / 'pairs.txt'}",
        f"landmarks={faces / 'landmarks.json'}", f"out={tmp_path / 'eval'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and (tmp_path / "eval" / "roc.png").is_file()
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert len(scores) == 400 and sum(s["same"] for s in scores) == 200
    result = _run("export", "onnx", f"weights={weights}", f"out={tmp_path / 'face.onnx'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "onnxruntime vs PyTorch" in result.stdout and (tmp_path / "face.onnx").is_file()
    result = _run("eval", "face", f"weights={weights}", "pairs=/nonexistent/pairs.txt")
    assert result.returncode == 2 and "pairs='/nonexistent/pairs.txt' does not exist" in result.stderr


def test_verification_metrics_by_hand() -> None:
    # Perfectly separated pairs: accuracy 1, AUC 1, TAR 1 at every measurable FAR.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.2, 0.1, 0.0] * 5)
    same = torch.tensor([1, 1, 1, 0, 0, 0] * 5).bool()
    metrics = verification_metrics(scores, same, folds=torch.arange(30) // 3)
    assert metrics["accuracy"] == 1.0 and metrics["auc"] == 1.0 and metrics["tar@far=0.1"] == 1.0
    assert 0.2 <= metrics["threshold"] < 0.7 and "tar@far=0.01" not in metrics  # 15 impostors: FAR >= 1/15 only


def test_load_embedder_refuses_foreign_weights(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_weights(torch.nn.Linear(2, 2), path, {"task": "detect", "model": "detr_r18_tiny"})
    with pytest.raises(ValueError, match="not written by `sightkit train face`"):
        load_embedder(path)


def test_unknown_embedder_is_an_error(faces: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model='detr_r18_tiny' is not a face embedder; choose one of"):
        train(FaceConfig(model="detr_r18_tiny", data=str(faces), out=str(tmp_path)))
