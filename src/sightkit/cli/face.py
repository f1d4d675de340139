"""``sightkit face enroll|identify|verify``: a gallery of enrolled people, 1:N identification
and 1:1 verification with a trained face embedder (``sightkit train face``).

::

    sightkit face enroll DIR weights=runs/face/train/best.safetensors      # DIR/NAME/*.png
    sightkit face identify IMAGE gallery=DIR/gallery.safetensors far=1e-3
    sightkit face verify IMG1 IMG2 gallery=DIR/gallery.safetensors far=1e-3   # or threshold=0.4
    sightkit face verify IMG name=PERSON gallery=DIR/gallery.safetensors    # against an enrolled person
"""

from __future__ import annotations

from typing import Annotated

import typer

from sightkit.cli.tasks import run
from sightkit.config import config_help
from sightkit.tasks.face_gallery import EnrollConfig, IdentifyConfig, VerifyConfig, enroll, identify, verify

Settings = Annotated[list[str] | None, typer.Argument(help="key=value settings (listed below)")]

face_app = typer.Typer(
    name="face",
    help="Enrol people, identify and verify faces: sightkit face enroll|identify|verify ... key=value.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _keys(config: type) -> str:
    # "\b" keeps click from re-wrapping the list, so each key stays on its own line.
    return f"\b\nkeys:\n{config_help(config)}"


@face_app.command("enroll", epilog=_keys(EnrollConfig))
def enroll_command(
    folder: Annotated[str, typer.Argument(help="DIR/NAME/*.png, one folder per person")], settings: Settings = None
) -> None:
    """Embed every person's images into a gallery file with calibrated FAR thresholds."""
    keys = [f"folder={folder}", *(settings or [])]
    run({"enroll": (EnrollConfig, enroll)}, "MODE", "enroll", keys, outputs={"out": "file"})


@face_app.command("identify", epilog=_keys(IdentifyConfig))
def identify_command(
    image: Annotated[str, typer.Argument(help="a face image or a folder of them")], settings: Settings = None
) -> None:
    """Find who each face is among the gallery's people (unknown below the threshold)."""
    keys = [f"image={image}", *(settings or [])]
    run({"identify": (IdentifyConfig, identify)}, "MODE", "identify", keys, outputs={"out": "folder"})


@face_app.command("verify", epilog=_keys(VerifyConfig))
def verify_command(
    first: Annotated[str, typer.Argument(help="the first face image")],
    second: Annotated[str, typer.Argument(help="the second face image, or a key=value (then give name=)")] = "",
    settings: Settings = None,
) -> None:
    """Cosine similarity of two faces (or of a face with an enrolled person, name=) and the same-person decision."""
    keys = list(settings or [])
    if second:  # without a second image, typer hands the first key=value to `second`
        keys.insert(0, second if "=" in second else f"second={second}")
    run({"verify": (VerifyConfig, verify)}, "MODE", "verify", [f"first={first}", *keys])
