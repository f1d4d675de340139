"""Tasks: each builds model, criterion, data and evaluator from a typed config and runs the engine."""

from sightkit._api import build_namespace
from sightkit.tasks import detect, export, face, face_detect, face_gallery, pose, segment  # noqa: F401  (imported for their @export declarations)

__all__ = build_namespace(__name__, globals())
