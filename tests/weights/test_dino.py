"""IDEA-Research DINO-4scale checkpoints, against a transcription of IDEA's network
(tests/weights/peers.py) with every tensor random, saved as its training script saves them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from sightkit.models import create_model
from sightkit.weights import dino
from sightkit.weights.resolve import build, convert
from sightkit.weights.sources import Fetched, fetch
from tests.weights.peers import IdeaDINO, padded_batch, randomise


@pytest.fixture(scope="module")
def peer_and_ours(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, torch.nn.Module]:
    peer = randomise(IdeaDINO("resnet18", enc_layers=1, dec_layers=2, d_ffn=64, num_queries=30)).eval()
    path = tmp_path_factory.mktemp("dino") / "checkpoint0011_4scale.pth"
    # main.py's checkpoint: the model beside the optimiser, the epoch and the argparse settings.
    checkpoint = {"model": peer.state_dict(), "optimizer": {"state": {}}, "epoch": 11}
    torch.save({**checkpoint, "args": argparse.Namespace(num_queries=30)}, path)
    converted = convert(fetch(str(path)))
    assert (converted.family, converted.model) == ("dino/idea", "dino_r50")
    assert converted.model_args == {
        "backbone": "resnet18",
        "num_encoder_layers": 1,
        "num_decoder_layers": 2,
        "dim_feedforward": 64,
        "num_queries": 30,
        **dino.IDEA_OPTIONS,
    }
    return peer, build(converted)


def compare(ours: torch.nn.Module, peer: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor) -> float:
    with torch.no_grad():
        a, b = ours(images, mask), peer(images, mask)
    pairs = [(a["pred_logits"], b["pred_logits"]), (a["pred_boxes"], b["pred_boxes"])]
    pairs += [(aux["pred_logits"], logits) for aux, logits in zip(a["aux_outputs"], b["aux_logits"], strict=True)]
    pairs += [(aux["pred_boxes"], boxes) for aux, boxes in zip(a["aux_outputs"], b["aux_boxes"], strict=True)]
    for mine, theirs in pairs:
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert b["pred_boxes"].std() > 0.05  # random weights: boxes far from a constant
    return max((mine - theirs).abs().max().item() for mine, theirs in pairs)


def test_padded_batch_gives_ideas_outputs(peer_and_ours: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    peer, ours = peer_and_ours
    compare(ours, peer, *padded_batch(64, 96))


def test_wide_image_with_border_anchors_gives_ideas_outputs(
    peer_and_ours: tuple[torch.nn.Module, torch.nn.Module],
) -> None:
    """416 pixels wide: the stride-8 level is 52 cells wide, so its border anchors (centre 0.5/52
    < 0.01) are invalid, and IDEA's infinite proposal boxes for them must be reproduced."""
    peer, ours = peer_and_ours
    compare(ours, peer, torch.randn(1, 3, 64, 416), torch.zeros(1, 64, 416, dtype=torch.bool))


def test_the_published_configuration_is_dino_r50_with_ideas_options() -> None:
    """DINO-4scale R50 (6+6 layers, FFN 2048, 900 queries, 4 levels, 4 points): every key maps
    onto dino_r50 with the same shape, and only the IDEA options are set."""
    with torch.device("meta"):
        state = IdeaDINO().state_dict()
        ours = create_model("dino_r50", **dino.IDEA_OPTIONS).state_dict()
    converted = dino.convert(Fetched(dict(state), "memory", Path("memory")))
    assert converted.model_args == dino.IDEA_OPTIONS
    assert {k: v.shape for k, v in converted.state.items()} == {k: v.shape for k, v in ours.items()}
    # The shared heads appear once per layer and once more under transformer.decoder (dropped):
    # per layer the class head's weight and bias, and the box MLP's three weights and biases.
    assert len(state) - len(converted.state) == 6 * 2 + 6 * 6


def test_bad_dino_options_are_errors() -> None:
    with pytest.raises(ValueError, match=r"invalid_anchor must be one of \('zero', 'inf'\), got 'nan'"):
        create_model("dino_r18_tiny", num_classes=2, invalid_anchor="nan")
    with pytest.raises(ValueError, match=r"query_pos_frame must be one of \('image', 'padded'\), got 'canvas'"):
        create_model("dino_r18_tiny", num_classes=2, query_pos_frame="canvas")
