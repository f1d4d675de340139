"""Shared fixtures of the serving tests: a tiny detector's weights and test images."""

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sightkit.engine.checkpoint import save_weights
from sightkit.models.registry import create_model

CLASSES = ["circle", "square", "triangle"]


def _png(height: int, width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def png() -> Callable[[int, int, int], bytes]:
    """``png(height, width, seed)``: the bytes of a PNG of random pixels."""
    return _png


@pytest.fixture(scope="session")
def detector_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random detr_r18_tiny weights with the metadata `sightkit train detect` writes (imgsz 64)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "detr.safetensors"
    metadata = {
        "task": "detect",
        "model": "detr_r18_tiny",
        "classes": json.dumps(CLASSES),
        "category_ids": json.dumps([1, 2, 5]),
        "imgsz": "64",
        "max_size": "96",
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
    }
    save_weights(create_model("detr_r18_tiny", num_classes=len(CLASSES)), path, metadata)
    return path


@pytest.fixture(scope="session")
def face_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random iresnet_tiny embedder weights as `sightkit train face` writes them (the embedder's
    tensors under ``embedder.``, the task's metadata)."""
    from sightkit.tasks.face import FaceConfig, build_embedder, weights_metadata

    torch.manual_seed(1)
    holder = torch.nn.Module()
    holder.embedder = build_embedder("iresnet_tiny").eval()
    path = tmp_path_factory.mktemp("weights") / "face.safetensors"
    save_weights(holder, path, weights_metadata(FaceConfig(model="iresnet_tiny"), holder.embedder, num_classes=4))
    return path


@pytest.fixture(scope="session")
def segment_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random unet_r18_tiny weights with the metadata `sightkit train segment` writes (imgsz 64,
    classes background, a, b)."""
    from tests.tasks.tiny import tiny_weights

    return tiny_weights("unet_r18_tiny", tmp_path_factory.mktemp("weights") / "unet.safetensors", seed=2)[1]
