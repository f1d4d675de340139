"""sightkit: find and recognise things in images.

Namespaces (each filled from the ``@export`` registry in :mod:`sightkit._api`):
``sightkit.ops`` (boxes, NMS, matching), ``sightkit.losses`` (IoU family, focal, varifocal).
"""

__version__ = "0.1.0"
