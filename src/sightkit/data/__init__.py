"""Datasets and data tools: COCO and Pascal VOC readers, transforms, collation, synthetic
datasets, semantic segmentation pairs, dataset checking."""

from sightkit._api import build_namespace
from sightkit.data import (  # noqa: F401  (for their @export declarations)
    check,
    coco,
    collate,
    faces,
    formats,
    preflight,
    segmentation,
    sources,
    synthetic,
    topdown,
    transforms,
    voc,
    yolo,
)

__all__ = build_namespace(__name__, globals())
