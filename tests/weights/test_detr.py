"""DETR converters: transformers' hub layout (save_pretrained) and facebookresearch/detr's
checkpoints, against transformers' DetrForObjectDetection with every tensor random."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sightkit.weights import LayoutMismatchError, WeightsUnavailableError, import_weights, resolve_source
from sightkit.weights.coco import COCO_91_NAMES
from sightkit.weights.resolve import build, convert
from sightkit.weights.sources import fetch
from tests.weights.peers import padded_batch, randomise

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")  # the hub layout's backbone is a timm ResNet

TINY = {
    "backbone": "resnet18",
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "num_queries": 7,
}


def transformers_detr(seed: int = 0, **settings: object) -> torch.nn.Module:
    """DetrForObjectDetection in the hub layout (a timm ResNet backbone), built from a config, random."""
    transformers.utils.logging.set_verbosity_error()
    config = transformers.DetrConfig(
        use_timm_backbone=True, use_pretrained_backbone=False, num_labels=91, auxiliary_loss=False, **settings
    )
    return randomise(transformers.DetrForObjectDetection(config), seed).eval()


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    folder = tmp_path_factory.mktemp("detr") / "detr-tiny"
    model = transformers_detr(**TINY)
    model.save_pretrained(folder)
    return model, folder


def compare(ours: torch.nn.Module, theirs: torch.nn.Module) -> float:
    images, mask = padded_batch()
    with torch.no_grad():
        a = ours(images, mask)
        b = theirs(pixel_values=images, pixel_mask=(~mask).long())
    torch.testing.assert_close(a["pred_logits"], b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a["pred_boxes"], b.pred_boxes, atol=1e-5, rtol=1e-5)
    return max((a["pred_logits"] - b.logits).abs().max().item(), (a["pred_boxes"] - b.pred_boxes).abs().max().item())


def test_transformers_layout_gives_the_same_outputs(peer: tuple[torch.nn.Module, Path]) -> None:
    model, folder = peer
    converted = convert(fetch(str(folder)))
    assert converted.family == "detr/transformers" and converted.model == "detr_r50"
    # Every setting that differs from detr_r50 is read from the shapes (heads from config.json).
    assert converted.model_args == {
        "backbone": "resnet18",
        "d_model": 32,
        "nhead": 2,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "dim_feedforward": 64,
        "num_queries": 7,
    }
    compare(build(converted), model)


def test_facebookresearch_layout_gives_the_same_outputs(peer: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    """The hub state dict renamed into facebookresearch/detr's names (their model's module
    names, written out here) and saved as their checkpoints are: {"model": ..., "args": ...}."""
    from safetensors.torch import load_file

    model, folder = peer
    theirs = {}
    for key, value in load_file(folder / "model.safetensors").items():
        key = key.replace("model.backbone.conv_encoder.model.", "backbone.0.body.")
        key = key.replace("model.input_projection.", "input_proj.").replace(
            "model.query_position_embeddings.", "query_embed."
        )
        key = key.replace("class_labels_classifier.", "class_embed.").replace("bbox_predictor.", "bbox_embed.")
        key = key.replace("model.decoder.layernorm.", "transformer.decoder.norm.")
        key = re.sub(r"^model\.(encoder|decoder)\.layers\.", r"transformer.\1.layers.", key)
        key = (
            key.replace(".encoder_attn.", ".multihead_attn.")
            .replace(".fc1.", ".linear1.")
            .replace(".fc2.", ".linear2.")
        )
        key = key.replace(".self_attn_layer_norm.", ".norm1.").replace(".encoder_attn_layer_norm.", ".norm2.")
        decoder = ".decoder." in key
        key = key.replace(".final_layer_norm.", ".norm3." if decoder else ".norm2.")
        theirs[key] = value
    for stack in ("encoder", "decoder"):
        for layer in range(2):
            for attention in ("self_attn", "multihead_attn") if stack == "decoder" else ("self_attn",):
                prefix = f"transformer.{stack}.layers.{layer}.{attention}."
                for kind in ("weight", "bias"):
                    parts = [theirs.pop(f"{prefix}{p}_proj.{kind}") for p in "qkv"]
                    theirs[f"{prefix}in_proj_{kind}"] = torch.cat(parts)
    path = tmp_path / "detr-tiny.pth"
    torch.save({"model": theirs, "args": argparse.Namespace(nheads=2)}, path)
    (tmp_path / "config.json").write_text(json.dumps({"encoder_attention_heads": 2}))
    converted = convert(fetch(str(path)))
    assert converted.family == "detr/facebookresearch"
    compare(build(converted), model)


def test_url_source_reads_torch_hub_cache(
    peer: tuple[torch.nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``torch.hub.load("facebookresearch/detr", ...)`` caches its checkpoint under the URL's file
    name in $TORCH_HOME/hub/checkpoints; the URL source finds it there."""
    _, folder = peer
    url = "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("SIGHTKIT_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as error:
        fetch(url)
    cached = tmp_path / "hub" / "checkpoints" / "detr-r50-e632da11.pth"
    assert str(error.value) == (
        f"{url}: detr-r50-e632da11.pth is not cached and downloads are off (SIGHTKIT_OFFLINE/HF_HUB_OFFLINE); "
        f"download {url} to {cached}"
    )
    cached.parent.mkdir(parents=True)
    state = fetch(str(folder)).state
    torch.save({"model": state}, cached)
    fetched = fetch(url)
    assert fetched.path == cached and fetched.state.keys() == state.keys()


def test_metadata_names_coco_classes_and_detr_sizes(peer: tuple[torch.nn.Module, Path]) -> None:
    _, folder = peer
    state, meta = resolve_source(str(folder / "model.safetensors"))
    assert meta["task"] == "detect" and meta["model"] == "detr_r50"
    # transformers' default config names labels LABEL_i; those names are kept over COCO's.
    assert json.loads(meta["classes"]) == [f"LABEL_{i}" for i in range(91)]
    assert json.loads(meta["category_ids"]) == list(range(91))
    assert (meta["imgsz"], meta["max_size"]) == ("800", "1333")
    assert state["class_embed.weight"].shape == (92, 32)


def test_coco_names_are_torchvisions() -> None:
    import torchvision

    reference = torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    assert list(COCO_91_NAMES[1:]) == reference[1:] and sum(n != "N/A" for n in COCO_91_NAMES) == 80


def test_a_mismatch_lists_missing_unexpected_and_misshaped_keys(peer: tuple[torch.nn.Module, Path]) -> None:
    _, folder = peer
    converted = convert(fetch(str(folder)))
    converted.state.pop("transformer.decoder_norm.weight")
    converted.state["transformer.extra.weight"] = torch.zeros(1)
    converted.state["input_proj.bias"] = torch.zeros(31)
    with pytest.raises(LayoutMismatchError) as error:
        build(converted)
    message = str(error.value)
    assert "1 missing keys (transformer.decoder_norm.weight)" in message
    assert "1 unexpected keys (transformer.extra.weight)" in message
    assert "1 mis-shaped keys (input_proj.bias: model (32,) vs file (31,))" in message
    assert "\n" not in message


def hf_cache(
    home: Path, repo: str, files: dict[str, Path], revision: str = "0123456789abcdef" * 2 + "01234567"
) -> Path:
    """huggingface_hub's cache layout: models--ORG--NAME/snapshots/<commit>/FILE and refs/main."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return snapshot


def test_hf_source_reads_huggingface_hub_cache_offline(
    peer: tuple[torch.nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, folder = peer
    hf_cache(tmp_path, "facebook/detr-resnet-50", {n: folder / n for n in ("config.json", "model.safetensors")})
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fetched = fetch("hf:facebook/detr-resnet-50")
    assert fetched.config["encoder_attention_heads"] == 2
    compare(build(convert(fetched)), model)


def test_hf_source_missing_offline_is_one_line_naming_the_cache_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as error:
        fetch("hf:facebook/detr-resnet-101")
    message = str(error.value)
    folder = tmp_path / "hub" / "models--facebook--detr-resnet-101"
    assert "\n" not in message and "model.safetensors or pytorch_model.bin" in message
    assert f"{folder}/snapshots/<commit>/model.safetensors" in message and f"{folder}/refs/main" in message


def test_import_writes_a_detect_weights_file(peer: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    from safetensors import safe_open

    model, folder = peer
    out = tmp_path / "detr.safetensors"
    summary = import_weights(str(folder), out, model="detr_r50", imgsz="64", max_size="96")
    assert summary["tensors"] == len(convert(fetch(str(folder))).state)
    with safe_open(str(out), framework="pt") as handle:
        meta = handle.metadata()
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    assert (meta["task"], meta["imgsz"], meta["max_size"], meta["source"]) == ("detect", "64", "96", str(folder))
    ours = build(convert(fetch(str(out))))
    assert ours.state_dict().keys() == state.keys()
    compare(ours, model)
    with pytest.raises(ValueError, match=r"model='rle_r50' does not match .* is a 'detr_r50'"):
        import_weights(str(folder), tmp_path / "x.safetensors", model="rle_r50")


@pytest.mark.slow
def test_the_hub_configuration_is_detr_r50(tmp_path: Path) -> None:
    """facebook/detr-resnet-50's configuration (transformers' defaults: timm ResNet-50, 6+6
    layers, d 256, 8 heads, FFN 2048, 100 queries) converts to detr_r50 without overrides."""
    model = transformers_detr(seed=1)
    model.save_pretrained(tmp_path)
    converted = convert(fetch(str(tmp_path)))
    assert converted.model_args == {}
    ours = build(converted)
    assert len(converted.state) == len(ours.state_dict())
    compare(ours, model)


def peer_detections(model: torch.nn.Module, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' own post-processing of its DETR on an RGB uint8 image (ImageNet normalisation,
    no resizing: the image already has the imported size): boxes ``[N, 4]`` xyxy pixels, scores ``[N]``."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = ((torch.from_numpy(image).float() / 255 - mean) / std).permute(2, 0, 1)[None]
    processor = transformers.DetrImageProcessor()
    with torch.no_grad():
        outputs = model(pixel_values=pixels, pixel_mask=torch.ones(1, *image.shape[:2], dtype=torch.long))
    (found,) = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[image.shape[:2]])
    return found["boxes"], found["scores"]


def max_box_difference(ours: np.ndarray, our_scores: np.ndarray, boxes: torch.Tensor, scores: torch.Tensor) -> float:
    """Largest pixel difference between each of our boxes and the peer's box of the same score
    (random weights give near-equal scores, so the order alone could pair different queries)."""
    assert len(ours) == len(boxes)
    worst = 0.0
    for box, score in zip(ours, our_scores, strict=True):
        same = (scores - float(score)).abs() < 1e-4
        assert same.any()
        worst = max(worst, (boxes[same] - torch.as_tensor(box)).abs().amax(1).min().item())
    return worst


def test_imported_weights_predict_the_peers_boxes(peer: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    """`sightkit weights import` then `sightkit predict detect` (the CLI) and `sightkit.load`:
    the boxes of transformers' post_process_object_detection."""
    from PIL import Image
    from typer.testing import CliRunner

    import sightkit
    from sightkit.cli.app import app

    model, folder = peer
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "image.png")
    boxes, scores = peer_detections(model, image)
    weights = tmp_path / "detr.safetensors"
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "import", str(folder), f"out={weights}", "imgsz=64", "max_size=96"])
    assert result.exit_code == 0, result.output
    assert "detr/transformers" in result.output and "detr_r50" in result.output
    args = [
        f"weights={weights}",
        f"source={tmp_path / 'image.png'}",
        f"out={tmp_path / 'pred'}",
        "conf=0",
        "device=cpu",
    ]
    result = runner.invoke(app, ["predict", "detect", *args])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    xywh = np.array([r["bbox"] for r in records])
    cli_boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    # The CLI rounds to 0.01 pixel and scores to 1e-4.
    assert max_box_difference(cli_boxes, np.array([r["score"] for r in records]), boxes, scores) < 0.011
    (found,) = sightkit.load(weights, device="cpu")(image, conf=0.0)
    assert max_box_difference(np.asarray(found.boxes), np.asarray(found.scores), boxes, scores) < 1e-3


def test_weights_list_names_every_family() -> None:
    from typer.testing import CliRunner

    from sightkit.cli.weights import weights_app

    result = CliRunner().invoke(weights_app, ["list"])
    assert result.exit_code == 0
    for text in ("hf:facebook/detr-resnet-50", "detr-r50-e632da11.pth", "torchvision:resnet50.IMAGENET1K_V1",
                 "insightface", "rle/regressflow", "dino/idea", "Apache-2.0"):  # fmt: skip
        assert text in result.output


def test_as_weights_file_imports_a_source_once_into_the_cache(
    peer: tuple[torch.nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sightkit.weights import as_weights_file, is_weights_file

    model, folder = peer
    hf_cache(tmp_path / "hf", "facebook/detr-resnet-50", {n: folder / n for n in ("config.json", "model.safetensors")})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SIGHTKIT_CACHE", str(tmp_path / "cache"))
    first = as_weights_file("hf:facebook/detr-resnet-50")
    assert first.parent == tmp_path / "cache" / "weights" and is_weights_file(first)
    written = first.stat().st_mtime_ns
    assert as_weights_file("hf:facebook/detr-resnet-50") == first and first.stat().st_mtime_ns == written
    assert as_weights_file(first) == first  # a sightkit weights file is used as it is
    assert not is_weights_file(folder / "model.safetensors")  # transformers' file has no task
    compare(build(convert(fetch(str(first)))), model)


def test_transformers_own_resnet_backbone_gives_the_same_outputs(tmp_path: Path) -> None:
    """The ``no_timm`` revisions of the hub checkpoints hold transformers' own ResNet."""
    transformers.utils.logging.set_verbosity_error()
    backbone = transformers.ResNetConfig(
        layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], out_features=["stage4"]
    )
    settings = {k: v for k, v in TINY.items() if k != "backbone"}
    config = transformers.DetrConfig(
        use_timm_backbone=False, backbone_config=backbone, num_labels=91, auxiliary_loss=False, **settings
    )
    model = randomise(transformers.DetrForObjectDetection(config)).eval()
    model.save_pretrained(tmp_path)
    converted = convert(fetch(str(tmp_path)))
    assert converted.family == "detr/transformers" and converted.model_args["backbone"] == "resnet18"
    compare(build(converted), model)
