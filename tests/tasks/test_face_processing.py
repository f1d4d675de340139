"""Face processing in the face commands (issue 19): head pose in the detectors' results and
pictures, the quality gate of enrolment, templates against best-of-images identification, and
face training with augmentation."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import sightkit
from sightkit.data.synthetic.faces import synthesize_faces
from sightkit.eval.face_template import identity_scores
from sightkit.ops.head_pose import head_pose
from sightkit.tasks.draw_faces import head_pose_axes
from sightkit.tasks.face_gallery import EnrollConfig, FaceGallery, VerifyConfig, enroll, template_thresholds, verify
from tests.cli_run import run_sightkit
from tests.tasks.tiny import tiny_weights


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Aligned 64-pixel crops of 6 identities (4 each), and 2 small scenes."""
    out = tmp_path_factory.mktemp("faces")
    synthesize_faces(
        out=str(out),
        images=2,
        size=96,
        identities=4,
        test_identities=4,
        per_identity=4,
        folds=2,
        pairs_per_fold=2,
        crop=64,
        progress=False,
    )
    return out


def test_head_pose_axes_by_hand() -> None:
    # Eyes at y = 0, mouth at y = 10, nose at (5, 5): the axes are 0.6 * 10 = 6 pixels long.
    marks = np.array([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [0.0, 10.0], [10.0, 10.0]]])
    frontal = head_pose_axes(marks, np.zeros((1, 3)))
    np.testing.assert_allclose(frontal[0], [[11.0, 5.0], [5.0, 11.0], [5.0, 5.0]], atol=1e-9)
    # Yaw +90 degrees turns the nose (z) to the image's right and x away from the camera.
    turned = head_pose_axes(marks, np.array([[math.pi / 2, 0.0, 0.0]]))
    np.testing.assert_allclose(turned[0], [[5.0, 5.0], [5.0, 11.0], [11.0, 5.0]], atol=1e-9)
    # Roll +90 degrees (clockwise in the image): x points down, y to the left.
    rolled = head_pose_axes(marks, np.array([[0.0, 0.0, math.pi / 2]]))
    np.testing.assert_allclose(rolled[0], [[5.0, 11.0], [-1.0, 5.0], [5.0, 5.0]], atol=1e-9)


def test_face_detect_results_carry_head_pose(faces: Path, tmp_path: Path) -> None:
    _, weights = tiny_weights("face_detector_tiny", tmp_path / "det.safetensors")
    scene = sorted((faces / "images").iterdir())[0]
    (result,) = sightkit.load(weights, "cpu")(str(scene), conf=0.0, progress=False)
    assert len(result) > 0
    expected = head_pose(torch.from_numpy(result.landmarks)).numpy()
    np.testing.assert_array_equal(result.head_pose, expected)
    record = result.to_dict()
    assert record["head_pose"] == [
        [None if math.isnan(v) else round(float(v), 4) for v in face] for face in expected.astype(np.float64)
    ]
    # The face embedder with this detector: its results carry the detector's head pose.
    _, embedder = tiny_weights("iresnet_tiny", tmp_path / "face.safetensors")
    (embedded,) = sightkit.load(embedder, "cpu")(str(scene), detector=str(weights), conf=0.0, progress=False)
    np.testing.assert_array_equal(embedded.head_pose, result.head_pose)
    # The picture has the axes: it differs from the same result drawn without the head pose.
    bare = sightkit.Results(
        **{**{k: getattr(result, k) for k in ("image", "task", "names")}, "landmarks": result.landmarks}
    )
    posed = sightkit.Results(
        image=result.image, task=result.task, landmarks=result.landmarks, head_pose=result.head_pose
    )
    assert (posed.plot() != bare.plot()).any()


def test_face_commands_measure_the_pose_of_detected_faces(faces: Path, tmp_path: Path) -> None:
    from sightkit.tasks.face_detect import TrainedFaceDetector
    from sightkit.tasks.face_gallery import find_faces

    _, weights = tiny_weights("face_detector_tiny", tmp_path / "det.safetensors")
    scene = sorted((faces / "images").iterdir())[0]
    (found,) = find_faces([scene], 32, TrainedFaceDetector(weights, score_threshold=0.0))
    assert len(found.quality) == found.landmarks.shape[0] > 0
    angles = head_pose(found.landmarks.float()).double()
    torch.testing.assert_close(torch.stack([found.quality.yaw, found.quality.pitch, found.quality.roll], 1), angles)
    torch.testing.assert_close(found.quality.score, found.scores.double())
    record = found.record(0)
    assert record["quality"]["yaw"] == pytest.approx(float(angles[0, 0]), abs=1e-4)


def test_templates_against_best_of_images_by_hand() -> None:
    # ann has two very different images; bob one, between ann's first image and the y axis.
    embeddings = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.8, 0.6, 0.0]])
    gallery = FaceGallery(["ann", "ann", "bob"], embeddings, "w.safetensors")
    query = torch.tensor([[1.0, 0.0, 0.0]])
    # Best of images: ann's first image is the query itself (1.0), bob 0.8.
    assert gallery.search(query, 2, match="best") == [[("ann", pytest.approx(1.0)), ("bob", pytest.approx(0.8))]]
    # Templates: ann's is (1, 0, 1) / sqrt(2), cosine 1 / sqrt(2) = 0.707 < bob's 0.8.
    half = 1 / math.sqrt(2)
    assert gallery.search(query, 2, match="template") == [[("bob", pytest.approx(0.8)), ("ann", pytest.approx(half))]]
    scores, people = identity_scores(query, embeddings, ["ann", "ann", "bob"], mode="template")
    assert people == gallery.people and torch.allclose(gallery.scores(query), scores)
    # Quality weights: ann's second image weighs nothing, her template is her first image.
    weighted = FaceGallery(["ann", "ann", "bob"], embeddings, "w.safetensors", pooling=torch.tensor([1.0, 0.0, 1.0]))
    assert weighted.search(query, 1)[0][0] == ("ann", pytest.approx(1.0))
    # Template thresholds: impostor scores of each image with the other person's template:
    # ann's images with bob's (0.8, 0) and bob's with ann's (0.8 / sqrt(2) = 0.566): FAR 1/3 lets 0.8 through.
    thresholds = template_thresholds(embeddings, ["ann", "ann", "bob"], gallery.templates, fars=(0.34, 0.1))
    assert thresholds == {0.34: pytest.approx(0.8 * half)}
    with pytest.raises(ValueError, match="match must be one of template, best, got 'mean'"):
        gallery.search(query, 1, match="mean")


def test_enroll_skips_tiny_and_blurred_faces_with_their_reasons(faces: Path, tmp_path: Path) -> None:
    _, weights = tiny_weights("iresnet_tiny", tmp_path / "face.safetensors")
    people = tmp_path / "people"
    sources = sorted((faces / "recognition" / "train").iterdir())
    for person in sources[:2]:
        (people / person.name).mkdir(parents=True)
        for image in sorted(person.iterdir())[:2]:
            Image.open(image).save(people / person.name / image.name)
    ann = people / sources[0].name
    crop = Image.open(sorted(ann.iterdir())[0])
    crop.resize((12, 12), Image.BILINEAR).save(ann / "tiny.png")
    crop.filter(ImageFilter.GaussianBlur(6)).save(ann / "blurred.png")
    gallery = enroll(
        EnrollConfig(folder=str(people), weights=str(weights), min_face=24, min_sharpness=20, out=str(tmp_path / "g"))
    )
    assert len(gallery.names) == 4 and gallery.people == [p.name for p in sources[:2]]
    records = {Path(r["image"]).name: r for r in json.loads((tmp_path / "g.json").read_text())}
    assert records["tiny.png"]["skipped"][0] == "face 12 px < min_face=24"
    (why,) = records["blurred.png"]["skipped"]
    assert why.startswith("sharpness ") and why.endswith(" < min_sharpness=20")
    assert records["blurred.png"]["quality"]["sharpness"] < 20 and records["blurred.png"]["weight"] is None
    kept = [r for r in records.values() if not r["skipped"]]
    assert len(kept) == 4 and all(r["quality"]["size"] == 64 and r["quality"]["sharpness"] >= 20 for r in kept)
    # The saved gallery holds the quality-weighted templates and reads back the same.
    loaded = FaceGallery.load(tmp_path / "g")
    assert torch.allclose(loaded.templates, gallery.templates) and torch.equal(loaded.pooling, gallery.pooling)
    # A face below the thresholds is an error for verify, with its reason.
    with pytest.raises(ValueError, match=r"tiny\.png is below the quality thresholds: face 12 px < min_face=24"):
        verify(
            VerifyConfig(
                first=str(ann / "tiny.png"), name=ann.name, gallery=str(tmp_path / "g"), min_face=24, threshold=0.5
            )
        )
    # verify against an enrolled person: their template.
    first = sorted(ann.iterdir())[0]
    answer = verify(VerifyConfig(first=str(first), name=ann.name, gallery=str(tmp_path / "g"), threshold=0.5))
    embedder = sightkit.load(weights, "cpu")
    (result,) = embedder(str(first), progress=False)
    template = loaded.templates[loaded.people.index(ann.name)]
    assert answer["similarity"] == pytest.approx(float(torch.from_numpy(result.embeddings[0]) @ template), abs=1e-5)


@pytest.mark.slow
def test_train_face_with_augmentation(faces: Path, tmp_path: Path) -> None:
    data = faces / "recognition"
    common = ["model=iresnet_tiny", "imgsz=32", f"data={data}", "steps=2", "batch=4", "progress=false", "plot=false"]
    augment = "augment={pose: 0.5, illumination: 0.5, occlusion: 0.3, expression: 0.2}"
    result = run_sightkit("train", "face", *common, augment, f"out={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "augment:" in config and "occlusion: 0.3" in config
    result = run_sightkit("train", "face", *common, "augment={pose: 0.5, lighting: 0.5}", f"out={tmp_path / 'bad'}")
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if "lighting" in line]
    assert "augment: unknown key 'lighting'" in line


@pytest.mark.slow
def test_augmented_training_is_repeatable_under_its_seed(faces: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sightkit.tasks.face import FaceConfig, train

    def trained(name: str, augment: dict[str, float], seed: int = 0) -> dict[str, torch.Tensor]:
        config = FaceConfig(
            model="iresnet_tiny", imgsz=32, data=str(faces / "recognition"), pairs="", out=str(tmp_path / name),
            steps=2, batch=8, seed=seed, augment=augment, progress=False, plot=False, tensorboard=False,
        )  # fmt: skip
        train(config)
        return load_file(str(tmp_path / name / "last.safetensors"))

    strong = {"pose": 1.0, "illumination": 1.0, "occlusion": 1.0, "expression": 1.0}
    first, again, plain = trained("a", strong), trained("b", strong), trained("c", {})
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], plain[k]) for k in first)  # the augmentation changed what was learnt
