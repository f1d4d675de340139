"""``sightkit serve weights=... key=value ...``: the HTTP API (:mod:`sightkit.serve`) under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from sightkit.cli import tasks
from sightkit.config import config_help
from sightkit.outputs import check_output
from sightkit.serve.config import ServeConfig, check_config, read_api_key


def run_serve(config: ServeConfig) -> None:
    # Settings first, before uvicorn and the models load: a bad port, host or gallery is one line at once.
    check_config(config, read_api_key(config))
    if config.face_weights:
        check_output(config.gallery, "gallery", "file")
    try:
        from sightkit.serve.app import run_server
    except ImportError as error:  # the serve extra is optional
        raise ValueError(f"sightkit serve needs the serve extra: pip install 'sightkit[serve]' ({error})") from None
    run_server(config)


def register(app: typer.Typer) -> None:
    """Add the serve command to ``app``."""

    @app.command(epilog=f"\b\nkeys:\n{config_help(ServeConfig)}")
    def serve(
        settings: Annotated[list[str] | None, typer.Argument(help="key=value settings (listed below)")] = None,
    ) -> None:
        """Serve a model over HTTP with dynamic batching and a web page: sightkit serve weights=best.safetensors."""
        tasks.run({"serve": (ServeConfig, run_serve)}, "MODE", "serve", settings)
