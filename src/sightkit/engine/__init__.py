"""The training engine: trainer loop, torchrun/DDP, optimisers and schedules, Robbins-Monro
averaging (meters, EMA, SWA), atomic checkpoints with exact resume, metrics and plots."""

from sightkit._api import build_namespace
from sightkit.engine import (  # noqa: F401  (imported for their @export declarations)
    averaging,
    checkpoint,
    data,
    distributed,
    metrics,
    optim,
    run_folder,
    trainer,
)

__all__ = build_namespace(__name__, globals())
