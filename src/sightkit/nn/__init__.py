"""Building blocks: position encodings, the DETR transformer, the upsampling family."""

from sightkit._api import build_namespace
from sightkit.nn import (  # noqa: F401  (imported for their @export declarations)
    deformable_attention,
    deformable_transformer,
    flows,
    position_encoding,
    transformer,
    upsample,
)

__all__ = build_namespace(__name__, globals())
