"""``sightkit weights``: import the ecosystem's checkpoints, list the known ones.

``sightkit weights import SOURCE out=FILE.safetensors [model=NAME] [imgsz=N] [max_size=N]``
converts a checkpoint (a file, ``hf:ORG/NAME``, a URL; see :mod:`sightkit.weights`) into a
sightkit weights file that ``predict``, ``eval``, ``export`` and ``serve`` read.
``sightkit weights list`` prints every known public source with its family and licence.

Exit status: 0 on success, 2 when the source cannot be read or converted.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from sightkit.cli.tasks import run
from sightkit.config import ConfigError, config_help


@dataclass
class ImportConfig:
    out: str = field(default="", metadata={"help": "the .safetensors weights file to write (required)"})
    model: str = field(default="", metadata={"help": "the sightkit model expected ('' : the one the layout names)"})
    imgsz: int = field(default=0, metadata={"help": "detect: shorter image side at prediction (0: the family's, 800)"})
    max_size: int = field(default=0, metadata={"help": "detect: longest image side (0: the family's, 1333)"})


weights_app = typer.Typer(
    name="weights",
    help="Pretrained weights: sightkit weights import SOURCE out=FILE.safetensors, sightkit weights list.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@weights_app.command(name="import", epilog=f"\b\nkeys:\n{config_help(ImportConfig)}")
def import_command(
    source: Annotated[str, typer.Argument(help="a checkpoint file or folder, hf:ORG/NAME[@REV][/FILE], or a URL")],
    settings: Annotated[list[str] | None, typer.Argument(help="key=value settings (listed below)")] = None,
) -> None:
    """Convert a public checkpoint into a sightkit weights file with full metadata."""
    run({"import": (ImportConfig, functools.partial(_import, source))}, "MODE", "import", settings, {"out": "file"})


def _import(source: str, config: ImportConfig) -> None:
    from sightkit.weights import import_weights

    if not config.out:
        raise ConfigError("out= is required: the .safetensors weights file to write")
    overrides = {k: str(v) for k, v in (("imgsz", config.imgsz), ("max_size", config.max_size)) if v}
    summary = import_weights(source, config.out, model=config.model, **overrides)
    args = f" {summary['model_args']}" if summary["model_args"] else ""
    done = (
        f"{source} ({summary['family']}) -> {summary['model']}{args}: {summary['tensors']} tensors "
        f"in {summary['seconds']:.1f} s, wrote "
    )
    Console(soft_wrap=True, highlight=False).print(Text.assemble(done, (str(summary["out"]), "bold")))


@weights_app.command(name="list")
def list_command() -> None:
    """Print every known public checkpoint with its family, model and licence, one per line."""
    from sightkit.weights import list_sources

    known = list_sources()
    rows = [("source", "family", "model", "what", "licence")]
    rows += [(k.source, k.family, k.model, k.what, k.licence) for k in known]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    console = Console(soft_wrap=True, highlight=False)
    for row in rows:
        # Lines are never wrapped, so that each source stays on one line that grep finds.
        console.print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + row[4], markup=False
        )
