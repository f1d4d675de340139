"""Evaluation: COCO box and keypoint AP/AR (faster-coco-eval), precision-recall plots, segmentation mIoU."""

from sightkit._api import build_namespace
from sightkit.eval import coco, face, face_quality, face_template, plots, pose, segmentation  # noqa: F401  (imported for their @export declarations)

__all__ = build_namespace(__name__, globals())
