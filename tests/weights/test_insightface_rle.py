"""insightface arcface_torch backbones and the official RLE RegressFlow, against transcriptions
of their networks (tests/weights/peers.py) with every tensor random, saved as their
``torch.save(model.state_dict())`` files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sightkit.data.coco import COCO_KEYPOINT_NAMES
from sightkit.models import create_model
from sightkit.weights import import_weights, resolve_source
from sightkit.weights.insightface import convert as convert_insightface
from sightkit.weights.resolve import build, convert
from sightkit.weights.sources import Fetched, fetch
from tests.weights.peers import InsightfaceIResNet, InsightfaceMobileFaceNet, RegressFlow, randomise


def saved(model: torch.nn.Module, path: Path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def test_iresnet18_file_gives_insightfaces_embeddings(tmp_path: Path) -> None:
    peer = randomise(InsightfaceIResNet((2, 2, 2, 2))).eval()
    converted = convert(fetch(saved(peer, tmp_path / "backbone.pth")))
    assert (converted.family, converted.model, converted.prefix) == ("insightface/iresnet", "iresnet18", "embedder.")
    crops = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(build(converted)(crops), peer(crops), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("blocks", "name"), [((3, 4, 6, 3), "iresnet34"), ((3, 4, 14, 3), "iresnet50"), ((3, 13, 30, 3), "iresnet100")]
)
def test_iresnet_depth_is_read_from_the_blocks(blocks: tuple[int, ...], name: str) -> None:
    with torch.device("meta"):
        state = InsightfaceIResNet(blocks).state_dict()
        ours = create_model(name).state_dict()
    converted = convert_insightface(Fetched(state, "memory", Path("memory")))
    assert converted.model == name
    assert {k: v.shape for k, v in converted.state.items()} == {k: v.shape for k, v in ours.items()}


def test_mobilefacenet_file_gives_insightfaces_embeddings(tmp_path: Path) -> None:
    peer = randomise(InsightfaceMobileFaceNet()).eval()
    converted = convert(fetch(saved(peer, tmp_path / "backbone.pth")))
    assert (converted.family, converted.model) == ("insightface/mobilefacenet", "mobilefacenet")
    assert len(converted.state) == len(peer.state_dict())
    crops = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(build(converted)(crops), peer(crops), atol=1e-5, rtol=1e-5)


def test_face_import_writes_an_embedder_weights_file(tmp_path: Path) -> None:
    from safetensors import safe_open

    peer = randomise(InsightfaceIResNet((2, 2, 2, 2))).eval()
    out = tmp_path / "r18.safetensors"
    import_weights(saved(peer, tmp_path / "backbone.pth"), out)
    with safe_open(str(out), framework="pt") as handle:
        meta, keys = handle.metadata(), list(handle.keys())
    assert (meta["task"], meta["model"], meta["embedding"], meta["imgsz"]) == ("face", "iresnet18", "512", "112")
    assert json.loads(meta["mean"]) == [0.5] * 3 and json.loads(meta["std"]) == [0.5] * 3
    assert all(k.startswith("embedder.") for k in keys) and len(keys) == len(peer.state_dict())
    state, again = resolve_source(str(out))  # a sightkit file resolves to itself
    assert again["model"] == "iresnet18"
    torch.testing.assert_close(state["fc.weight"], peer.fc.weight)


def test_rle_regressflow_gives_the_official_outputs(tmp_path: Path) -> None:
    peer = randomise(RegressFlow()).eval()
    path = tmp_path / "coco_rle_r50.pth"
    # The official checkpoints come from DataParallel training: every key starts with "module.".
    torch.save({f"module.{k}": v for k, v in peer.state_dict().items()}, path)
    converted = convert(fetch(str(path)))
    assert (converted.family, converted.model, converted.model_args) == ("rle/regressflow", "rle_r50", {})
    ours = build(converted)
    crops = torch.randn(2, 3, 64, 48)
    points = torch.randn(50, 2)
    with torch.no_grad():
        outputs = ours(crops)
        coords, sigma = peer(crops)
        torch.testing.assert_close(outputs["coords"], coords, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outputs["sigma"], sigma, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.flow.log_prob(points), peer.flow.log_prob(points), atol=1e-5, rtol=1e-5)
    meta = converted.metadata
    assert meta["task"] == "pose" and json.loads(meta["keypoint_names"]) == list(COCO_KEYPOINT_NAMES)
    assert json.loads(meta["mean"]) == [0.406, 0.457, 0.480] and json.loads(meta["std"]) == [1.0, 1.0, 1.0]


def test_unknown_layout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"the keys \(encoder.weight, decoder.bias, ...\) match no known layout"):
        resolve_source(str(path))
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="holds no state dict"):
        fetch(str(path))
    with pytest.raises(FileNotFoundError, match=r"source='missing\.pth': no such file"):
        fetch("missing.pth")
