"""Who may call the API: loopback by default, the Host allowlist (DNS rebinding), same-origin
unsafe requests (CSRF), the key from a file or the environment (never the command line), and
names that cannot impersonate one another."""

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI

from sightkit.serve.app import create_app
from sightkit.serve.config import ServeConfig, check_config, is_loopback, read_api_key
from sightkit.serve.gallery import check_name
from sightkit.serve.security import allowed_hosts, host_name
from tests.serve.clients import local_client

PNG = Callable[[int, int, int], bytes]


@pytest.fixture
def face_app(face_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.delenv("SIGHTKIT_API_KEY", raising=False)
    return create_app(ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "g.db")))


def enrol(client: object, png: PNG, headers: dict[str, str]) -> object:
    files = [("images", ("a.png", png(32, 32, 1), "image/png"))]
    return client.post("/v1/face/enroll", data={"name": "alice"}, files=files, headers=headers)


def test_another_host_name_is_refused_dns_rebinding(face_app: FastAPI, png: PNG) -> None:
    """A page at http://evil.example whose name resolves to 127.0.0.1 sends Host: evil.example;
    the server answered it (and enrolled) as if it were its own page."""
    with local_client(face_app) as client:
        for method, path in (("get", "/v1/face"), ("get", "/v1/model"), ("get", "/")):
            refused = getattr(client, method)(path, headers={"Host": "evil.example:8000"})
            assert refused.status_code == 403 and refused.json()["error"] == "forbidden_host", path
            assert "DNS rebinding" in refused.json()["detail"]
        assert enrol(client, png, {"Host": "evil.example"}).status_code == 403
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
            assert client.get("/v1/face", headers={"Host": host}).status_code == 200, host
        assert client.get("/v1/face").json() == {"identities": {}}


def test_unsafe_requests_from_another_origin_are_refused_csrf(face_app: FastAPI, png: PNG) -> None:
    """Any web page could post a form to the server on loopback (enrol) or send a DELETE."""
    with local_client(face_app) as client:
        for origin in ("http://evil.example", "null", "http://localhost:3000", "https://localhost"):
            refused = enrol(client, png, {"Origin": origin})
            assert refused.status_code == 403 and refused.json()["error"] == "cross_origin", origin
        assert client.delete("/v1/face/alice", headers={"Origin": "http://evil.example"}).status_code == 403
        assert client.get("/v1/face").json() == {"identities": {}}
        assert enrol(client, png, {"Origin": "http://localhost"}).status_code == 200  # the page's own origin
        assert enrol(client, png, {}).status_code == 200  # programs send no Origin
        # Reading from another origin is harmless (the browser keeps the answer from the page).
        assert client.get("/v1/face", headers={"Origin": "http://evil.example"}).json() == {"identities": {"alice": 2}}


def test_allowed_hosts_and_hosts_other_than_loopback(face_weights: Path, tmp_path: Path) -> None:
    def hosts(**settings: object) -> frozenset[str] | None:
        return allowed_hosts(ServeConfig(face_weights=str(face_weights), **settings))

    assert hosts() == {"localhost", "127.0.0.1", "::1"}
    assert hosts(allowed_hosts="Box.lan, box") == {"localhost", "127.0.0.1", "::1", "box.lan", "box"}
    assert hosts(host="0.0.0.0", insecure=True) is None  # any: the operator chose the network
    assert hosts(host="10.0.0.2", allowed_hosts="api.example") == {"api.example"}
    assert [host_name(h) for h in ("a.b:80", "[::1]:8000", "[::1]", "::1", "A.B")] == [
        "a.b",
        "::1",
        "::1",
        "::1",
        "a.b",
    ]
    assert [is_loopback(h) for h in ("127.0.0.1", "127.4.5.6", "::1", "[::1]", "localhost", "0.0.0.0", "10.1.1.1")] == [
        True, True, True, True, True, False, False,
    ]  # fmt: skip
    settings = ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "g.db"), host="0.0.0.0")
    with pytest.raises(
        ValueError, match=r"host='0.0.0.0' opens the server to the network without a key.*insecure=true"
    ):
        check_config(settings)
    check_config(settings, api_key="k")
    check_config(ServeConfig(face_weights=str(face_weights), host="0.0.0.0", insecure=True))
    app = create_app(ServeConfig(face_weights=str(face_weights), gallery=str(tmp_path / "g.db"), host="0.0.0.0"), "k")
    with local_client(app) as client:  # any Host; the key guards everything under /v1
        assert client.get("/v1/face", headers={"Host": "box.lan"}).status_code == 401
        assert client.get("/v1/face", headers={"Host": "box.lan", "X-API-Key": "k"}).status_code == 200


def test_the_key_comes_from_a_file_or_the_environment(
    face_weights: Path, tmp_path: Path, png: PNG, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {"face_weights": str(face_weights), "gallery": str(tmp_path / "g.db")}
    monkeypatch.setenv("SIGHTKIT_API_KEY", "from-env")
    assert read_api_key(ServeConfig(**base)) == "from-env"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert read_api_key(ServeConfig(api_key_file=str(key_file), **base)) == "from-file"  # the file wins
    key_file.write_text("\n")
    with pytest.raises(ValueError, match=r"api_key_file=.*key' is empty"):
        read_api_key(ServeConfig(api_key_file=str(key_file), **base))
    with pytest.raises(FileNotFoundError, match=r"api_key_file=.*missing' does not exist"):
        read_api_key(ServeConfig(api_key_file=str(tmp_path / "missing"), **base))
    assert "api_key" not in ServeConfig.__dataclass_fields__  # never a command-line setting (ps shows those)
    with local_client(create_app(ServeConfig(**base))) as client:
        assert enrol(client, png, {}).status_code == 401
        assert enrol(client, png, {"X-API-Key": "from-env"}).status_code == 200
        assert client.get("/v1/model", headers={"X-API-Key": "from-env"}).json()["face"]["api_key_required"] is True


def test_names_are_nfc_and_refuse_invisible_and_control_characters(face_app: FastAPI, png: PNG) -> None:
    """ "é" as one code point and as e + a combining accent were two people; a zero-width space or
    a right-to-left override made a name that looks like another's."""
    assert check_name(" Ame\u0301lie ") == "Am\u00e9lie"
    for name, shown in (
        ("a\u200bb", "U+200B"),
        ("\u202eecila", "U+202E"),
        ("a\u0007", "U+0007"),
        ("x\u2028y", "U+2028"),
    ):
        with pytest.raises(ValueError, match=re.escape(f"printable characters (holds {shown})")):
            check_name(name)
    files = [("images", ("a.png", png(32, 32, 2), "image/png"))]
    with local_client(face_app) as client:
        first = client.post("/v1/face/enroll", data={"name": "Ame\u0301lie"}, files=files)
        second = client.post("/v1/face/enroll", data={"name": "Am\u00e9lie"}, files=files)
        assert (first.json()["total"], second.json()["total"]) == (1, 2)
        assert client.get("/v1/face").json() == {"identities": {"Am\u00e9lie": 2}}
        refused = client.post("/v1/face/enroll", data={"name": "Am\u00e9lie\u200b"}, files=files)
        assert refused.status_code == 422 and "U+200B" in refused.json()["detail"]
        assert client.delete("/v1/face/Ame%CC%81lie").json() == {"name": "Am\u00e9lie", "removed": 2}
