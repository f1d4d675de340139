"""Building blocks: position encodings and the DETR transformer."""

from sightkit._api import build_namespace
from sightkit.nn import position_encoding, transformer  # noqa: F401  (imported for their @export declarations)

__all__ = build_namespace(__name__, globals())
