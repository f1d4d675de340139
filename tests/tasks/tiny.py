"""Weights files of any registered model at tiny sizes, with the metadata its task writes, for
tests that go through ``sightkit.load`` without training."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from sightkit.data.coco import COCO_KEYPOINT_NAMES, COCO_SKELETON, keypoint_flip_pairs
from sightkit.engine.checkpoint import save_weights
from sightkit.models import create_model, model_task

MEAN, STD = json.dumps([0.485, 0.456, 0.406]), json.dumps([0.229, 0.224, 0.225])
#: The crop side of face embedders and the pose crop size used here.
FACE_SIDE, POSE_SIZE = 32, (64, 48)


def tiny_model(name: str) -> tuple[nn.Module, dict[str, str]]:
    """``name`` built small (two classes, 17 keypoints, 32-pixel face crops) and the weights
    metadata its task's training would write."""
    task = model_task(name)
    if task == "detect":
        # Queries beyond the encoder's tokens on these small pictures are refused (DINO's 900 at R50).
        overrides = {"num_queries": 20} if getattr(create_model(name, num_classes=2), "num_queries", 0) > 100 else {}
        model = create_model(name, num_classes=2, **overrides)
        metadata = {
            "model_args": json.dumps(overrides), "classes": json.dumps(["person", "ball"]),
            "category_ids": json.dumps([1, 7]), "imgsz": "64", "max_size": "96",
        }  # fmt: skip
    elif task == "pose":
        model = create_model(name, num_keypoints=17, upsample="deconv")
        metadata = {
            "input_size": json.dumps(list(POSE_SIZE)), "keypoint_names": json.dumps(list(COCO_KEYPOINT_NAMES)),
            "flip_pairs": json.dumps([list(p) for p in keypoint_flip_pairs(COCO_KEYPOINT_NAMES)]),
            "skeleton": json.dumps([list(p) for p in COCO_SKELETON]), "category_id": "1", "upsample": "deconv",
            "decode": "taylor", "padding": "1.25",
        }  # fmt: skip
    elif task == "segment":
        model = create_model(name, num_classes=3)
        metadata = {
            "upsample": model.upsample_mode, "classes": json.dumps(["background", "a", "b"]), "imgsz": "64",
            "max_size": "0", "ignore_index": "255",
        }  # fmt: skip
    elif task == "face":
        model = create_model(name, input_size=FACE_SIDE)
        metadata = {"embedding": str(model.num_features), "imgsz": str(FACE_SIDE), "classes": "2", "margins": "{}"}
        metadata.update(mean=json.dumps([0.5] * 3), std=json.dumps([0.5] * 3))
    elif task == "face_detect":
        model = create_model(name)
        metadata = {"imgsz": "64", "max_size": "96"}
    else:
        raise ValueError(f"no tiny recipe for {name!r} (task {task!r})")
    return model, {"task": task, "model": name, "mean": MEAN, "std": STD, **metadata}


def tiny_weights(name: str, path: Path, seed: int = 0) -> tuple[nn.Module, Path]:
    """Save :func:`tiny_model` (seeded) to ``path``; returns the model (eval mode) and the path.
    Face embedders are saved under ``embedder.`` as ``sightkit train face`` saves them."""
    torch.manual_seed(seed)
    model, metadata = tiny_model(name)
    saved = nn.ModuleDict({"embedder": model}) if metadata["task"] == "face" else model
    save_weights(saved, path, metadata)
    return model.eval(), path
