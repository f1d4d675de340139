"""Models by name (``create_model``, ``list_models``), backbones and the DETR detector."""

from sightkit._api import build_namespace
from sightkit.models import backbones, detr, detr_postprocess, registry  # noqa: F401  (for their @export declarations)

__all__ = build_namespace(__name__, globals())
