"""Pretrained weights: sources (local files, ``torchvision:``, ``timm:``, ``hf:``, URLs) and
converters from the ecosystem's layouts into sightkit's.

- :func:`resolve_source`: any source -> ``(state_dict, metadata)`` in sightkit's layout, the
  metadata of a weights file included (``sightkit.load(SOURCE)`` uses it);
- :func:`import_weights`: the same, written as a ``.safetensors`` weights file
  (``sightkit weights import``); :func:`as_weights_file` imports a source once into
  sightkit's cache (``sightkit.load(SOURCE)``);
- :func:`load_backbone_weights`: ImageNet ResNet weights into any model's backbone
  (``backbone_weights=`` of training), :func:`default_backbone_weights` per preset;
- :func:`list_sources`: the public checkpoints known to load (``sightkit weights list``).

One converter per family: :mod:`~sightkit.weights.resnet` (torchvision/timm ResNets),
:mod:`~sightkit.weights.detr` (facebookresearch and transformers DETR),
:mod:`~sightkit.weights.insightface` (arcface_torch IResNet, MobileFaceNet),
:mod:`~sightkit.weights.rle` (the official RLE RegressFlow).
"""

from sightkit.weights.backbone import BACKBONE_WEIGHTS, default_backbone_weights, load_backbone_weights
from sightkit.weights.catalog import KnownSource, list_sources
from sightkit.weights.layout import Converted, LayoutMismatchError, fit_state_dict
from sightkit.weights.resolve import as_weights_file, import_weights, is_weights_file, resolve_source
from sightkit.weights.sources import WeightsUnavailableError, fetch, offline

__all__ = [
    "BACKBONE_WEIGHTS",
    "Converted",
    "KnownSource",
    "LayoutMismatchError",
    "WeightsUnavailableError",
    "as_weights_file",
    "default_backbone_weights",
    "fetch",
    "fit_state_dict",
    "import_weights",
    "is_weights_file",
    "list_sources",
    "load_backbone_weights",
    "offline",
    "resolve_source",
]
