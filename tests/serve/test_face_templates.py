"""Templates and the quality gate in the served face gallery: identify and verify answer what
`sightkit face identify|verify` answer on the same gallery and faces, templates follow enrolments
and deletions, poor faces are skipped with their reasons, older gallery files still open."""

import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from sightkit.eval.face_template import pool_templates
from sightkit.serve.app import create_app
from sightkit.serve.config import ServeConfig
from sightkit.serve.gallery import SQLiteGallery
from sightkit.tasks.face_gallery import EnrollConfig, IdentifyConfig, VerifyConfig, enroll, identify, verify
from tests.serve.clients import local_client

PNG = Callable[[int, int, int], bytes]


def faces(**named: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{name}.png", data, "image/png")) for name, data in named.items()]


@pytest.fixture
def people(png: PNG, tmp_path: Path) -> Path:
    """people/alice: two crops of different sizes, people/bob: one; and a query crop q.png of neither."""
    sizes = {"people/alice/a.png": (64, 64), "people/alice/a2.png": (80, 80), "people/bob/b.png": (72, 72)}
    for seed, (name, (height, width)) in enumerate({**sizes, "q.png": (64, 64)}.items()):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(height, width, 200 + seed))
    return tmp_path / "people"


@pytest.mark.parametrize("match", ["template", "best"])
def test_serve_identify_and_verify_equal_the_command_line(
    face_weights: Path, people: Path, tmp_path: Path, match: str
) -> None:
    query = tmp_path / "q.png"
    gallery = tmp_path / "g.safetensors"
    enroll(EnrollConfig(folder=str(people), weights=str(face_weights), out=str(gallery)))
    (cli,) = identify(IdentifyConfig(image=str(query), gallery=str(gallery), threshold=0.5, top_k=2, match=match))
    cli_verify = verify(VerifyConfig(first=str(query), name="alice", gallery=str(gallery), threshold=0.5, match=match))

    settings = ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "g.db"), face_threshold=0.5)
    with local_client(create_app(settings)) as client:
        for name, files in {"alice": ["a.png", "a2.png"], "bob": ["b.png"]}.items():
            uploads = faces(**{f[:-4]: (people / name / f).read_bytes() for f in files})
            assert client.post("/v1/face/enroll", data={"name": name}, files=uploads).json()["skipped"] == []
        served = client.post(f"/v1/face/identify?match={match}", files=faces(q=query.read_bytes())).json()
        served_verify = client.post(
            f"/v1/face/verify?match={match}", files={"image": ("q.png", query.read_bytes())}, data={"name": "alice"}
        ).json()
    ((face,),) = [r["faces"] for r in served["results"]]
    assert [m["name"] for m in face["matches"]] == [name for name, _ in cli["candidates"]]
    assert [m["score"] for m in face["matches"]] == pytest.approx([s for _, s in cli["candidates"]], abs=1e-5)
    assert face["quality"] == pytest.approx(cli["quality"], abs=1e-3) and face["skipped"] == cli["skipped"] == []
    assert served_verify["score"] == pytest.approx(cli_verify["similarity"], abs=1e-5)


def test_templates_follow_enrolments_and_deletions(tmp_path: Path) -> None:
    gallery = SQLiteGallery(tmp_path / "g.db", "toy", 3)
    gallery.enroll("ann", torch.tensor([[1.0, 0.0, 0.0]]), weights=torch.tensor([0.5]))
    torch.testing.assert_close(gallery.template_of("ann"), torch.tensor([1.0, 0.0, 0.0]))
    # A second face of weight 1.5 pulls the template 3 times as hard: (0.5 e1 + 1.5 e2) / |.|.
    gallery.enroll("ann", torch.tensor([[0.0, 2.0, 0.0]]), weights=torch.tensor([1.5]))
    expected = torch.tensor([0.5, 1.5, 0.0]) / (0.5**2 + 1.5**2) ** 0.5
    torch.testing.assert_close(gallery.template_of("ann"), expected)
    reference, _ = pool_templates(gallery.embeddings_of("ann"), ["ann", "ann"], torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(gallery.template_of("ann"), reference[0])
    gallery.enroll("bo", torch.tensor([[0.0, 0.0, 1.0]]))
    (found,) = gallery.identify(torch.tensor([[0.0, 0.0, 1.0]]), top_k=2)
    assert found == [("bo", pytest.approx(1.0)), ("ann", pytest.approx(0.0, abs=1e-6))]
    gallery.delete("bo")
    assert gallery.template_of("bo") is None
    assert gallery.identify(torch.tensor([[0.0, 0.0, 1.0]]), top_k=2) == [[("ann", pytest.approx(0.0, abs=1e-6))]]
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0"):
        gallery.enroll("ann", torch.ones(1, 3), weights=torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="match must be one of template, best, got 'mean'"):
        gallery.identify(torch.ones(1, 3), match="mean")


def test_a_gallery_file_without_weights_opens_with_weight_one(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema before templates
        db.executescript(
            "CREATE TABLE gallery_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO gallery_info VALUES ('embedder', 'toy'), ('dim', '2');"
            "CREATE TABLE faces (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, embedding BLOB NOT NULL,"
            " source TEXT NOT NULL DEFAULT '', created REAL NOT NULL);"
        )
        rows = [("cy", np.array(v, dtype="<f4").tobytes(), 0.0) for v in ([1.0, 0.0], [0.0, 1.0])]
        db.executemany("INSERT INTO faces(name, embedding, created) VALUES (?, ?, ?)", rows)
    gallery = SQLiteGallery(path, "toy", 2)
    half = 2**-0.5
    torch.testing.assert_close(gallery.template_of("cy"), torch.tensor([half, half]))
    assert gallery.enroll("cy", torch.tensor([[1.0, 1.0]])) == 3


def test_poor_faces_are_skipped_with_their_reasons(face_weights: Path, people: Path, tmp_path: Path) -> None:
    small, large = (people / "alice" / "a.png").read_bytes(), (people / "alice" / "a2.png").read_bytes()
    settings = ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "g.db"), min_face=70)
    with local_client(create_app(settings)) as client:
        answer = client.post("/v1/face/enroll", data={"name": "alice"}, files=faces(a=small, a2=large)).json()
        skipped = [{"image": "a.png", "reasons": ["face 64 px < min_face=70"]}]
        assert answer == {"name": "alice", "added": 1, "total": 1, "skipped": skipped}
        refused = client.post("/v1/face/enroll", data={"name": "bob"}, files=faces(a=small))
        assert refused.status_code == 422 and refused.json()["error"] == "poor_face"
        assert "a.png: face 64 px < min_face=70" in refused.json()["detail"]
        found = client.post("/v1/face/identify", files=faces(a=small, a2=large)).json()
        (skipped,), (kept,) = (r["faces"] for r in found["results"])
        assert skipped["skipped"] == ["face 64 px < min_face=70"] and skipped["matches"] == []
        assert skipped["identity"] is None and skipped["quality"]["size"] == pytest.approx(64)
        assert kept["skipped"] == [] and kept["identity"] == "alice"
        verdict = client.post("/v1/face/verify", files={"image": ("a.png", small)}, data={"name": "alice"})
        assert verdict.status_code == 422 and "face 64 px < min_face=70" in verdict.json()["detail"]
