"""Losses, each as a function and as an ``nn.Module`` that holds its hyper-parameters."""

from sightkit._api import build_namespace
from sightkit.losses import (
    dino_criterion,  # noqa: F401
    face_detection,  # noqa: F401
    focal,  # noqa: F401  (imported for its @export declarations)
    iou,  # noqa: F401
    margin,  # noqa: F401
    partial_fc,  # noqa: F401
    rle,  # noqa: F401
    segmentation,  # noqa: F401
    set_criterion,  # noqa: F401
    varifocal,  # noqa: F401
    vfnet_criterion,  # noqa: F401
)

__all__ = build_namespace(__name__, globals())
