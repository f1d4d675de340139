"""Models by name (``create_model``, ``list_models``), backbones and the DETR detector."""

from sightkit._api import build_namespace
from sightkit.models import (
    backbones,  # noqa: F401  (imported for its @export declarations)
    denoising,  # noqa: F401
    deploy,  # noqa: F401
    detr,  # noqa: F401
    detr_postprocess,  # noqa: F401
    dino,  # noqa: F401
    dino_postprocess,  # noqa: F401
    face,  # noqa: F401
    face_detector,  # noqa: F401
    fpn,  # noqa: F401
    mtcnn,  # noqa: F401
    pose,  # noqa: F401
    registry,  # noqa: F401
    seg,  # noqa: F401
    vfnet,  # noqa: F401
)

__all__ = build_namespace(__name__, globals())
