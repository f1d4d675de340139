"""What every task's train, eval and predict commands share: the device setting, the images of
a ``source=``, and the metadata of a ``.safetensors`` weights file."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def resolve_device(name: str) -> torch.device:
    """``device=`` of the commands: the device it names, or ``cuda`` when there is one and ``cpu`` otherwise."""
    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def image_paths(source: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES, argument: str = "source") -> list[Path]:
    """``source=`` of the predict commands (``argument`` names it in errors): one image file, or
    every image under a folder (sorted).

    Raises:
        ValueError: ``source`` is empty.
        FileNotFoundError: it does not exist, or the folder holds no image.
    """
    path = Path(source)
    if not source:
        raise ValueError(f"{argument}= is required: an image file or a folder of images")
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes)
        if not paths:
            raise FileNotFoundError(f"{argument}={source!r} holds no images ({', '.join(suffixes)})")
        return paths
    if not path.is_file():
        raise FileNotFoundError(f"{argument}={source!r} does not exist")
    return [path]


def read_metadata(weights: str | Path) -> dict[str, str]:
    """The metadata of a ``.safetensors`` weights file (clear errors for missing or foreign files)."""
    from safetensors import safe_open

    path = Path(weights)
    if not str(weights):
        raise ValueError("weights= is required: a .safetensors file written by `sightkit train`")
    if not path.is_file():
        raise FileNotFoundError(f"weights={str(path)!r} does not exist")
    if path.suffix != ".safetensors":
        raise ValueError(f"weights must be a .safetensors file written by `sightkit train`, got {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ValueError(f"weights={str(path)!r} is not a readable safetensors file ({error})") from None
