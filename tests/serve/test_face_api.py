"""The face endpoints: scores equal the command line's embeddings, the gallery survives a
restart, the API key guards enrol/delete, bad input is a 4xx JSON error."""

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightkit.models.face import embed_faces
from sightkit.serve.app import create_app
from sightkit.serve.config import ServeConfig
from sightkit.serve.gallery import GalleryMismatchError
from sightkit.tasks.face import load_embedder
from sightkit.tasks.face_gallery import find_faces
from tests.serve.clients import face_detector_weights, local_client

PNG = Callable[[int, int, int], bytes]
KEY = {"X-API-Key": "s3cret"}


def embed_files(weights: Path, files: list[Path], landmarks: str = "") -> torch.Tensor:
    """The embeddings `sightkit face enroll|identify|verify` compute for face crops."""
    loaded = load_embedder(weights)
    crops = torch.cat([found.crops for found in find_faces(files, loaded.imgsz, None, landmarks)])
    return embed_faces(loaded.model, crops, flip=True)


def faces(**named: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{name}.png", data, "image/png")) for name, data in named.items()]


@pytest.fixture
def crops(png: PNG, tmp_path: Path) -> dict[str, Path]:
    """Three face crops of different sizes (resized to 64 x 64 by the server and the CLI alike)."""
    paths = {}
    for seed, (name, (height, width)) in enumerate({"a": (64, 64), "a2": (70, 60), "b": (80, 80)}.items()):
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(png(height, width, 100 + seed))
    return paths


def test_enrol_identify_verify_restart_delete(face_weights: Path, crops: dict[str, Path], tmp_path: Path) -> None:
    reference = embed_files(face_weights, [crops["a"], crops["a2"], crops["b"]])
    cos_ab, cos_a2b = float(reference[0] @ reference[2]), float(reference[1] @ reference[2])
    data = {name: path.read_bytes() for name, path in crops.items()}
    settings = {"face_weights": str(face_weights), "gallery": str(tmp_path / "g.db"), "face_threshold": 0.999}

    # protect_reads=false: the key guards enrol and delete only.
    with local_client(create_app(ServeConfig(protect_reads=False, **settings), api_key="s3cret")) as client:
        refused = client.post("/v1/face/enroll", data={"name": "alice"}, files=faces(a=data["a"]))
        assert refused.status_code == 401 and refused.json() == {
            "detail": "this endpoint needs the server's key in header X-API-Key (missing)",
            "error": "unauthorized",
        }
        wrong = client.post(
            "/v1/face/enroll", data={"name": "x"}, files=faces(a=data["a"]), headers={"X-API-Key": "no"}
        )
        assert wrong.status_code == 401 and "(wrong)" in wrong.json()["detail"]
        both = faces(a=data["a"], a2=data["a2"])
        alice = client.post("/v1/face/enroll", data={"name": "alice"}, files=both, headers=KEY)
        assert alice.json() == {"name": "alice", "added": 2, "total": 2, "skipped": []}
        bob = client.post("/v1/face/enroll", data={"name": " bob "}, files=faces(b=data["b"]), headers=KEY)
        assert bob.json() == {"name": "bob", "added": 1, "total": 1, "skipped": []}

        found = client.post("/v1/face/identify?match=best", files=faces(a=data["a"], b=data["b"])).json()
        assert found["threshold"] == 0.999
        first_image, second_image = found["results"]
        assert (first_image["width"], first_image["height"], second_image["width"]) == (64, 64, 80)
        (first,), (second,) = first_image["faces"], second_image["faces"]  # crops: one face each, the whole image
        assert first["box"] == [0, 0, 64, 64] and first["landmarks"] is None and first["detection_score"] is None
        assert first["identity"] == "alice" and second["identity"] == "bob"
        assert first["matches"][0] == {"name": "alice", "score": pytest.approx(1.0, abs=1e-5)}
        assert first["matches"][1] == {"name": "bob", "score": pytest.approx(cos_ab, abs=1e-5)}
        # bob's best match among alice's faces is the larger of his cosines with a and a2.
        assert second["matches"][1] == {"name": "alice", "score": pytest.approx(max(cos_ab, cos_a2b), abs=1e-5)}

        pair = client.post("/v1/face/verify", files={"image": ("a.png", data["a"]), "image2": ("b.png", data["b"])})
        assert pair.json() == {
            "score": pytest.approx(cos_ab, abs=1e-5),
            "same": cos_ab > 0.999,
            "threshold": 0.999,
            "against": "b.png",
        }
        a2 = {"image": ("a2.png", data["a2"])}
        named = client.post("/v1/face/verify?match=best", files=a2, data={"name": "alice"}).json()
        assert named["score"] == pytest.approx(1.0, abs=1e-5) and named["same"] is True

    # A restart, with the default protect_reads=true: reading needs the key too.
    with local_client(create_app(ServeConfig(**settings), api_key="s3cret")) as client:
        for path in ("/v1/face", "/v1/model"):
            refused = client.get(path)
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized", path
        assert client.post("/v1/face/identify", files=faces(a=data["a"])).status_code == 401
        assert client.get("/v1/face", headers=KEY).json() == {"identities": {"alice": 2, "bob": 1}}
        again = client.post("/v1/face/identify?match=best", files=faces(a=data["a"], b=data["b"]), headers=KEY).json()
        assert again == found
        assert client.get("/healthz").status_code == 200  # liveness stays open
        assert client.delete("/v1/face/bob").status_code == 401
        assert client.delete("/v1/face/bob", headers=KEY).json() == {"name": "bob", "removed": 1}
        gone = client.delete("/v1/face/bob", headers=KEY)
        assert gone.status_code == 404 and gone.json() == {"detail": "'bob' is not enrolled", "error": "unknown_name"}
        info = client.get("/v1/model", headers=KEY).json()
        assert info["task"] is None and info["face"]["identities"] == 1 and info["face"]["api_key_required"] is True
        assert info["face"]["model"] == "iresnet_tiny" and info["face"]["embedding"] == 128


def test_landmarks_align_as_the_command_line_does(face_weights: Path, crops: dict[str, Path], tmp_path: Path) -> None:
    points = [[20.5, 25.0], [44.0, 24.5], [32.0, 36.0], [23.0, 47.5], [41.5, 47.0]]
    (tmp_path / "landmarks.json").write_text(json.dumps({"b.png": points}))
    aligned = embed_files(face_weights, [crops["b"]], str(tmp_path / "landmarks.json"))
    plain = embed_files(face_weights, [crops["b"]])
    settings = ServeConfig(weights=str(face_weights), gallery=str(tmp_path / "g.db"))  # face weights as weights=
    with local_client(create_app(settings)) as client:
        client.post("/v1/face/enroll", data={"name": "bob"}, files=faces(b=crops["b"].read_bytes()))
        files = {"image": ("b.png", crops["b"].read_bytes())}
        answer = client.post("/v1/face/verify", files=files, data={"name": "bob", "landmarks": json.dumps([points])})
    assert answer.status_code == 200, answer.text
    assert answer.json()["score"] == pytest.approx(float(aligned[0] @ plain[0]), abs=1e-5)
    assert float(aligned[0] @ plain[0]) < 0.9999  # the alignment changed the crop


def test_bad_face_requests_are_4xx_json(face_weights: Path, png: PNG, tmp_path: Path) -> None:
    settings = ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "g.db"))
    image = png(64, 64, 1)
    with local_client(create_app(settings)) as client:
        cases = [
            (client.post("/v1/face/enroll", data={"name": "\t"}, files=faces(a=image)), 422, "name must be 1 to 128"),
            (
                client.post("/v1/face/identify", files=faces(a=image), data={"landmarks": "[[1, 2]"}),
                422,
                "landmarks: not JSON",
            ),
            (
                client.post("/v1/face/identify", files=faces(a=image), data={"landmarks": "[null, null]"}),
                422,
                "landmarks: expected a list of 1 entries (one per image), got a list of 2",
            ),
            (
                client.post("/v1/face/identify", files=faces(a=image), data={"landmarks": "[[[1, 2]]]"}),
                422,
                "landmarks[0]: expected five [x, y] pairs of finite numbers, got [[1, 2]]",
            ),
            (
                client.post(
                    "/v1/face/verify", files={"image": ("a.png", image), "image2": ("b.png", image)}, data={"name": "x"}
                ),
                422,
                "give exactly one of image2 (a second face) or name (enrolled)",
            ),
            (
                client.post("/v1/face/verify", files={"image": ("a.png", image)}, data={"name": "nobody"}),
                404,
                "'nobody' is not enrolled (enrolled: 0 people)",
            ),
            (
                client.post("/v1/face/identify", files=[("images", ("x.jpg", b"GIF89a not really", "image/jpeg"))]),
                415,
                "x.jpg: the content is not a JPEG, PNG, WebP or BMP image",
            ),
            (client.post("/v1/predict", files=faces(a=image)), 404, "this server has no model for /v1/predict"),
        ]
        for response, status, message in cases:
            assert response.status_code == status, response.text
            assert message in response.json()["detail"]
        assert client.get("/v1/face").json() == {"identities": {}}  # nothing was enrolled


def test_the_gallery_refuses_another_embedder(face_weights: Path, tmp_path: Path) -> None:
    from sightkit.serve.gallery import SQLiteGallery

    SQLiteGallery(tmp_path / "g.db", "mobilefacenet_tiny sha256:0", 128).close()
    with pytest.raises(GalleryMismatchError, match="embeddings of different models cannot be compared"):
        create_app(ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "g.db")))


def test_without_landmarks_the_face_detector_finds_and_aligns_faces(
    face_weights: Path, png: PNG, tmp_path: Path
) -> None:
    """face_detector= runs the detector on photos: identify lists every face with its box,
    landmarks and score as the face_detect predictor finds them, and verify scores the largest
    faces as the face predictor embeds them (detect, align by the 5 landmarks, embed)."""
    import sightkit

    detector = face_detector_weights(tmp_path / "faces.safetensors", bias=4.0)
    photos = {"p.png": png(72, 96, 21), "q.png": png(80, 64, 22)}
    arrays = {name: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for name, data in photos.items()}
    found = {name: sightkit.load(detector, "cpu")(a, progress=False)[0] for name, a in arrays.items()}
    embedded = {
        name: sightkit.load(face_weights, "cpu")(a, detector=str(detector), progress=False)[0]
        for name, a in arrays.items()
    }
    settings = ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "g.db"), face_detector=str(detector))
    with local_client(create_app(settings)) as client:
        answer = client.post("/v1/face/identify", files=faces(p=photos["p.png"])).json()
        pair = client.post(
            "/v1/face/verify", files={"image": ("p.png", photos["p.png"]), "image2": ("q.png", photos["q.png"])}
        ).json()
        info = client.get("/v1/model").json()
    assert info["face"]["detector"] == str(detector)
    (result,) = answer["results"]
    reference = found["p.png"].to_dict()
    assert len(result["faces"]) == len(reference["boxes"]) > 1
    assert [f["box"] for f in result["faces"]] == reference["boxes"]
    assert [f["landmarks"] for f in result["faces"]] == reference["landmarks"]
    assert [f["detection_score"] for f in result["faces"]] == reference["scores"]

    def largest(result: sightkit.Results) -> np.ndarray:
        areas = (result.boxes[:, 2] - result.boxes[:, 0]) * (result.boxes[:, 3] - result.boxes[:, 1])
        return result.embeddings[int(np.argmax(areas))]

    cosine = float(largest(embedded["p.png"]) @ largest(embedded["q.png"]))
    assert pair["score"] == pytest.approx(cosine, abs=1e-5) and pair["against"] == "q.png"


def test_no_face_found(face_weights: Path, png: PNG, tmp_path: Path) -> None:
    """A detector that finds nothing (think: a photo of a cat): identify answers the image with
    no faces (200), enrol and verify a 422 no_face, and nothing is enrolled. Without a detector
    the same photo was embedded whole and "identified"."""
    detector = face_detector_weights(tmp_path / "none.safetensors", bias=-30.0)
    settings = ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "g.db"), face_detector=str(detector))
    cat = png(64, 64, 9)
    with local_client(create_app(settings)) as client:
        identify = client.post("/v1/face/identify", files=faces(cat=cat))
        enroll = client.post("/v1/face/enroll", data={"name": "tom"}, files=faces(cat=cat))
        verify = client.post("/v1/face/verify", files={"image": ("cat.png", cat), "image2": ("cat2.png", cat)})
        listed = client.get("/v1/face").json()
    assert identify.status_code == 200
    assert identify.json()["results"] == [{"image": "cat.png", "width": 64, "height": 64, "faces": []}]
    for answer in (enroll, verify):
        assert answer.status_code == 422 and answer.json() == {
            "detail": f"cat.png: no face found (face_detector={detector})",
            "error": "no_face",
        }
    assert listed == {"identities": {}}
