"""The face task: a tiny IResNet trained briefly verifies held-out synthetic identities, the
CLI end to end (train, eval, export) in a subprocess, weights loading and metrics."""

import json
from pathlib import Path

import pytest
import torch

from sightkit.data.synthetic.faces import synthesize_faces
from sightkit.engine.checkpoint import save_weights
from sightkit.losses import PartialFC
from sightkit.tasks.face import FaceConfig, FaceEvalConfig, evaluate, load_embedder, train, verification_metrics
from sightkit.tasks.face_gallery import FaceGallery, impostor_thresholds
from tests.cli_run import run_sightkit


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 training identities and 20 held-out ones (10 crops each), LFW pairs over the held-out;
    5 small scenes (4 train, 1 val) for the detector."""
    out = tmp_path_factory.mktemp("faces")
    synthesize_faces(
        out=str(out), images=5, size=96, identities=40, test_identities=20, per_identity=10, crop=64, progress=False
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


@pytest.mark.slow
def test_cli_train_eval_export(faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_sightkit(
        "train", "face", "model=mobilefacenet_tiny", "imgsz=32", f"data={faces}", f"out={run}", "steps=2", "batch=8",
        "progress=false", "plot=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    weights = run / "last.safetensors"
    result = run_sightkit(
        "eval", "face", f"weights={weights}", f"data={faces}", "split=test", f"out={tmp_path / 'eval'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and (tmp_path / "eval" / "roc.png").is_file()
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert len(scores) == 400 and sum(s["same"] for s in scores) == 200
    result = run_sightkit("export", "onnx", f"weights={weights}", f"out={tmp_path / 'face.onnx'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "onnxruntime vs PyTorch" in result.stdout and (tmp_path / "face.onnx").is_file()
    # The gallery: enrol the held-out people, identify one of their images, verify two.
    test, landmarks = faces / "test", f"landmarks={faces / 'landmarks.json'}"
    result = run_sightkit(
        "face", "enroll", str(test), f"weights={weights}", landmarks, f"out={tmp_path / 'gallery.safetensors'}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "enrolled 20 people (200 images)" in result.stdout
    image = test / "person_00041" / "person_00041_0003.png"
    gallery = f"gallery={tmp_path / 'gallery.safetensors'}"
    result = run_sightkit("face", "identify", str(image), gallery, landmarks, "far=0.1", f"out={tmp_path / 'who'}")
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = json.loads((tmp_path / "who" / "identities.json").read_text())
    assert record["image"] == str(image) and len(record["candidates"]) == 5
    result = run_sightkit("face", "verify", str(image), str(image), gallery, landmarks, "far=0.1")
    assert result.returncode == 0 and "similarity 1.0000" in result.stdout and "same person" in result.stdout
    with pytest.raises(FileNotFoundError, match=r"pairs='/nonexistent/pairs\.txt' does not exist"):
        evaluate(FaceEvalConfig(weights=str(weights), pairs="/nonexistent/pairs.txt"))


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
    with pytest.raises(ValueError, match="model='detr_r18_tiny' is not a face model; choose one of"):
        train(FaceConfig(model="detr_r18_tiny", data=str(faces), out=str(tmp_path)))


def test_gallery_search_thresholds_and_round_trip(tmp_path: Path) -> None:
    # Three people on the axes of R^3, ann twice: per-person scores are each person's best entry.
    embeddings = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 1.0, 0], [0, 0, 1.0]])
    names = ["ann", "ann", "bob", "cy"]
    gallery = FaceGallery(names, embeddings, "w.safetensors", {0.1: 0.5})
    query = torch.tensor([[0.0, 0.96, 0.28]])
    assert gallery.search(query, top_k=3, match="best") == [
        [("bob", pytest.approx(0.96)), ("ann", pytest.approx(0.768)), ("cy", pytest.approx(0.28))]
    ]
    path = gallery.save(tmp_path / "g.safetensors")
    loaded = FaceGallery.load(path)
    assert loaded.names == names and loaded.thresholds == {0.1: 0.5} and torch.equal(loaded.embeddings, embeddings)
    assert loaded.threshold(0.2) == 0.5
    with pytest.raises(ValueError, match=r"far=0\.01 is below every FAR the gallery could calibrate"):
        loaded.threshold(0.01)


def test_impostor_thresholds_exact_by_hand_and_streaming() -> None:
    # Impostor pairs (i < j, different people): ann-bob 0.8 and 0.0, ann-cy 0 and 0, bob-cy 0 -> five
    # scores {0.8, 0, 0, 0, 0}, one of them above 0: FAR 0.2 lets exactly the 0.8 pair through.
    embeddings = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 1.0, 0], [0, 0, 1.0]])
    thresholds = impostor_thresholds(embeddings, ["ann", "ann", "bob", "cy"], fars=(0.2, 0.1))
    assert thresholds == {0.2: pytest.approx(0.0)}  # 0.1 needs 10 impostor pairs
    # 600 random people: 179,700 impostor pairs; the streaming estimate (forced) agrees with the exact one.
    g = torch.Generator().manual_seed(0)
    many = torch.nn.functional.normalize(torch.randn(600, 16, generator=g))
    people = [f"p{k}" for k in range(600)]
    exact = impostor_thresholds(many, people, fars=(1e-1, 1e-2))
    streamed = impostor_thresholds(many, people, fars=(1e-1, 1e-2), block=64, exact_limit=0)
    for far in (1e-1, 1e-2):
        assert abs(streamed[far] - exact[far]) < 0.01, (far, streamed[far], exact[far])


WHEEL = Path(__file__).parents[2] / "runs/weights/facenet_pytorch-2.6.0-py3-none-any.whl"


@pytest.mark.slow
@pytest.mark.skipif(not WHEEL.is_file(), reason=f"no facenet-pytorch wheel at {WHEEL} for MTCNN's weights; "
                    "get it with `pip download --no-deps facenet-pytorch==2.6.0 -d runs/weights`")  # fmt: skip
def test_mtcnn_enrol_and_identify_a_photograph(tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data

    from sightkit.tasks.face import FaceTrainer, build_embedder
    from sightkit.tasks.face_gallery import EnrollConfig, IdentifyConfig, enroll, identify

    # An (untrained) embedder: the same face gives the same embedding, so the photograph finds itself.
    embedder = build_embedder("iresnet_tiny")
    weights = save_weights(
        FaceTrainer(embedder, PartialFC(128, 2)), tmp_path / "w.safetensors",
        {"task": "face", "model": "iresnet_tiny", "embedding": "128", "imgsz": "64", "mean": "[0.5, 0.5, 0.5]",
         "std": "[0.5, 0.5, 0.5]"},
    )  # fmt: skip
    photo = data.astronaut()
    (tmp_path / "people" / "eileen").mkdir(parents=True)
    Image.fromarray(photo).save(tmp_path / "people" / "eileen" / "photo.png")
    Image.fromarray(photo[:, ::-1].copy()).save(tmp_path / "people" / "eileen" / "mirrored.png")
    gallery = enroll(
        EnrollConfig(folder=str(tmp_path / "people"), weights=str(weights), detector="mtcnn", wheel=str(WHEEL))
    )
    assert gallery.names == ["eileen", "eileen"]
    # Flip-averaged embeddings of a photo and its mirror image are the same up to the detector's symmetry.
    assert float(gallery.embeddings[0] @ gallery.embeddings[1]) > 0.9
    records = identify(
        IdentifyConfig(
            image=str(tmp_path / "people" / "eileen" / "photo.png"),
            gallery=str(tmp_path / "people" / "gallery.safetensors"),
            detector="mtcnn",
            wheel=str(WHEEL),
            threshold=0.5,
            out=str(tmp_path / "who"),
        )
    )
    (record,) = records
    assert record["identity"] == "eileen" and record["candidates"][0][1] == pytest.approx(1.0, abs=1e-5)
    x1, y1, x2, y2 = record["box"]
    assert 150 < x1 < x2 < 300 and 30 < y1 < y2 < 200  # the face in the upper middle of the 512 x 512 photo
    assert (tmp_path / "who" / "photo.jpg").stat().st_size > 10_000


@pytest.mark.slow
def test_cli_face_detector(faces: Path, tmp_path: Path) -> None:
    from sightkit.tasks.export import ExportConfig, export_onnx
    from sightkit.tasks.face_detect import TrainedFaceDetector

    data, run = faces.parent, tmp_path / "det"
    result = run_sightkit(
        "train", "face_detect", "model=face_detector_tiny", f"data={data}", f"out={run}", "steps=2", "batch=2",
        "imgsz=64", "max_size=96", "progress=false", "plot=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    weights = run / "last.safetensors"
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "AP" in metrics and -1 <= metrics["AP"] <= 1  # evaluated on the val scene
    scene = next((data / "images").iterdir())
    result = run_sightkit(
        "predict", "face_detect", f"weights={weights}", f"source={scene}", f"out={tmp_path / 'pred'}", "conf=0"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert record["boxes"] and len(record["landmarks"][0]) == 5 and (tmp_path / "pred" / f"{scene.stem}.jpg").is_file()
    # The untrained detector's boxes are in the scene's own pixels (its resize undone).
    detector = TrainedFaceDetector(weights, score_threshold=0.0)
    assert detector.detect(torch.zeros(1, 3, 90, 60, dtype=torch.uint8))[0]["boxes"][:, 2].max() < 200
    out = export_onnx(ExportConfig(weights=str(weights), out=str(tmp_path / "det.onnx")))
    assert out.is_file()
