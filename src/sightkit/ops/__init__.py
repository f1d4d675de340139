"""Pure tensor functions: box conversion and the IoU family, NMS variants, matching."""

from sightkit._api import build_namespace
from sightkit.ops import (
    align,  # noqa: F401
    atss,  # noqa: F401
    boxes,  # noqa: F401  (imported for its @export declarations)
    head_pose,  # noqa: F401
    keypoints,  # noqa: F401
    matching,  # noqa: F401
    multiclass_nms,  # noqa: F401
    nms,  # noqa: F401
)

__all__ = build_namespace(__name__, globals())
