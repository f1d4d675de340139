"""``sightkit.load(SOURCE)`` and ``weights=SOURCE`` take hub sources and foreign checkpoints directly
(imported once into sightkit's cache), offline through a pre-populated Hugging Face cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import sightkit
from sightkit.cli.app import app
from sightkit.weights import import_weights
from tests.weights.test_detr import TINY, hf_cache, transformers_detr


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "peer"
    transformers_detr(**TINY).save_pretrained(folder)
    hf_cache(tmp_path / "hf", "facebook/detr-resnet-50", {n: folder / n for n in ("config.json", "model.safetensors")})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SIGHTKIT_CACHE", str(tmp_path / "cache"))
    return folder


@pytest.mark.slow
def test_load_a_hub_source_equals_loading_its_import(hub: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    direct = sightkit.load("hf:facebook/detr-resnet-50", device="cpu")
    import_weights(str(hub), tmp_path / "imported.safetensors", imgsz="800", max_size="1333")
    imported = sightkit.load(tmp_path / "imported.safetensors", device="cpu")
    (a,) = direct(image, conf=0.0)
    (b,) = imported(image, conf=0.0)
    assert len(a) == len(b) == TINY["num_queries"]
    assert a.to_dict()["boxes"] == b.to_dict()["boxes"] and a.to_dict()["scores"] == b.to_dict()["scores"]
    cached = list((tmp_path / "cache" / "weights").glob("*.safetensors"))
    assert len(cached) == 1
    sightkit.load("hf:facebook/detr-resnet-50", device="cpu")  # the second load reuses the import
    assert list((tmp_path / "cache" / "weights").glob("*.safetensors")) == cached


def test_cli_predict_takes_a_hub_source(hub: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(tmp_path / "grey.png")
    out = tmp_path / "pred"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "detect",
            "weights=hf:facebook/detr-resnet-50",
            f"source={tmp_path / 'grey.png'}",
            f"out={out}",
            "conf=0",
        ],
    )
    assert result.exit_code == 0, result.output + result.stderr
    (record,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(record["boxes"]) == TINY["num_queries"]
    assert all(0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 48 for x1, y1, x2, y2 in record["boxes"])
