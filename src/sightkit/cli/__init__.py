"""The ``sightkit`` command line: ``sightkit MODE [TASK] key=value ...``."""

from sightkit.cli.app import app, main

__all__ = ["app", "main"]
