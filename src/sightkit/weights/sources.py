"""Where weights come from: a source string -> a state dict in its publisher's layout.

Source strings:

- a local file: ``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` read with
  ``torch.load(weights_only=True)`` (no code runs while loading); a checkpoint dict holding
  the weights under ``model`` or ``state_dict`` is unwrapped, and the ``module.`` prefix of
  a ``DataParallel`` model is dropped; a ``config.json`` beside the file is read with it,
  and a ``save_pretrained`` folder stands for its ``model.safetensors``;
- ``torchvision:NAME[.WEIGHTS]``: a torchvision weight enum (``torchvision:resnet50`` is
  ``ResNet50_Weights.DEFAULT``; ``torchvision:resnet50.IMAGENET1K_V1`` names one), through
  torch.hub's cache, ``$TORCH_HOME/hub/checkpoints/<file name of the URL>``;
- ``https://...``: a state-dict file at a URL, through the same torch.hub cache (the cache
  ``torch.hub.load("facebookresearch/detr", ...)`` fills);
- ``hf:ORG/NAME[@REVISION][/FILE]``: a Hugging Face hub repository, through huggingface_hub's
  cache (``$HF_HOME/hub``); without ``FILE``, ``model.safetensors`` or else
  ``pytorch_model.bin``, with ``config.json`` when the repository has one;
- ``timm:NAME``: a timm model's pretrained weights (needs the ``timm`` extra).

Downloads are off when ``SIGHTKIT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: a file that is not
cached is then a one-line error naming the file and the cache path to put it at. Without
those switches a failed download gives the same line.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor

#: Local file types; the others are read by torch.load(weights_only=True).
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SCHEMES = ("torchvision:", "timm:", "hf:", "https://", "http://")
#: The weights files of a transformers checkpoint, by preference.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: The keys under which training scripts save the model's state dict inside a checkpoint.
_WRAPPERS = ("model", "state_dict", "model_state_dict")


class WeightsUnavailableError(FileNotFoundError):
    """A source's file is neither cached nor downloadable; the message is one line that says
    where to put it."""


@dataclass
class Fetched:
    """A state dict as published, with where it came from.

    Attributes:
        state: parameter and buffer names -> tensors, in the publisher's layout.
        source: the source string.
        path: the file read (a cache path for downloaded sources).
        config: the repository's ``config.json`` (``hf:`` sources), else empty.
        metadata: a safetensors file's header metadata, else empty.
    """

    state: dict[str, Tensor]
    source: str
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def offline() -> bool:
    """Whether downloads are off (``SIGHTKIT_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1/true/yes/on)."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in _OFFLINE_SWITCHES)


_OFFLINE_SWITCHES = ("SIGHTKIT_OFFLINE", "HF_HUB_OFFLINE")


def is_remote(source: str) -> bool:
    return source.startswith(SCHEMES)


def fetch(source: str) -> Fetched:
    """Read ``source`` (module docstring), downloading it into its library's cache if needed.

    Raises:
        FileNotFoundError: a local file that does not exist.
        WeightsUnavailableError: not cached and downloads are off or failed.
        ValueError: an unknown scheme, weight enum or file type.
    """
    if not isinstance(source, str) or not source:
        raise TypeError(f"source must be a non-empty string (a file, torchvision:, timm:, hf: or URL), got {source!r}")
    if source.startswith("torchvision:"):
        return _torchvision(source)
    if source.startswith(("https://", "http://")):
        return _url(source, source)
    if source.startswith("hf:"):
        return _hf(source)
    if source.startswith("timm:"):
        return _timm(source)
    path = Path(source).expanduser()
    if path.is_dir():  # a save_pretrained folder
        path = next((path / name for name in HF_WEIGHT_FILES if (path / name).is_file()), path / HF_WEIGHT_FILES[0])
    if not path.is_file():
        raise FileNotFoundError(
            f"source={source!r}: no such file (give a weights file, a save_pretrained folder or one of the schemes "
            f"{', '.join(SCHEMES)})"
        )
    state, metadata = read_file(path)
    # A transformers checkpoint's settings (heads, label names) live in the config.json beside it.
    config_path = path.with_name("config.json")
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return Fetched(state, source, path, config=config, metadata=metadata)


def read_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict in a local weights file and its safetensors metadata (empty for torch files).

    Raises:
        ValueError: an unsupported file type, or a file that holds no state dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})  # noqa: SIM118
    if path.suffix not in TORCH_SUFFIXES:
        raise ValueError(
            f"weights file {str(path)!r}: expected .safetensors or one of {TORCH_SUFFIXES}, got {path.suffix!r}"
        )
    # facebookresearch's training checkpoints keep their argparse settings next to the
    # weights; a Namespace is plain data, so it is allowed alongside tensors.
    with torch.serialization.safe_globals([argparse.Namespace]):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    return unwrap_state_dict(loaded, str(path)), {}


def unwrap_state_dict(loaded: object, what: str) -> dict[str, Tensor]:
    """The tensors of a state dict, possibly inside a checkpoint dict (``model``, ``state_dict``),
    without a ``module.`` prefix that every key shares (``DataParallel``)."""
    while isinstance(loaded, Mapping):
        inner = next((loaded[k] for k in _WRAPPERS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping) or not any(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{what} holds no state dict (a mapping of names to tensors), got {type(loaded).__name__}")
    state = {str(k): v for k, v in loaded.items() if isinstance(v, Tensor)}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------- torch.hub


def torch_hub_checkpoints() -> Path:
    """torch.hub's download folder, ``$TORCH_HOME/hub/checkpoints`` (read at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision(source: str) -> Fetched:
    import torchvision

    spec = source.removeprefix("torchvision:")
    name, _, tag = spec.partition(".")
    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError:
        raise ValueError(
            f"source={source!r}: torchvision has no model {name!r} with weights "
            "(e.g. torchvision:resnet50, torchvision:resnet50.IMAGENET1K_V1)"
        ) from None
    if tag and tag not in enum.__members__:
        choices = ", ".join(enum.__members__)
        raise ValueError(f"source={source!r}: {enum.__name__} has no {tag!r}; choose one of {choices}")
    weights = enum[tag] if tag else enum.DEFAULT
    return _url(source, weights.url)


def _url(source: str, url: str) -> Fetched:
    filename = Path(urlparse(url).path).name
    cached = torch_hub_checkpoints() / filename
    if not cached.is_file():
        if offline():
            raise WeightsUnavailableError(
                f"{source}: {filename} is not cached and downloads are off (SIGHTKIT_OFFLINE/HF_HUB_OFFLINE); "
                f"download {url} to {cached}"
            )
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            # torch.hub checks the SHA-256 prefix that torchvision's file names carry.
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=_hash_prefix(filename), progress=True)
        except Exception as error:  # urllib raises several types (URLError, HTTPError, timeouts)
            raise WeightsUnavailableError(
                f"{source}: could not download {url} ({error}); put the file at {cached}"
            ) from None
    state, _ = read_file(cached)
    return Fetched(state, source, cached)


def _hash_prefix(filename: str) -> str | None:
    """The hash in torchvision-style names (``resnet50-0676ba61.pth``), as torch.hub's ``check_hash`` reads it."""
    stem = Path(filename).stem
    prefix = stem.rpartition("-")[2]
    return prefix if "-" in stem and len(prefix) >= 6 and all(c in "0123456789abcdef" for c in prefix) else None


# --------------------------------------------------------------------------- Hugging Face hub


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment at call time
    (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface")
    return Path(home).expanduser() / "hub"


def parse_hf(source: str) -> tuple[str, str | None, str | None]:
    """``hf:ORG/NAME[@REVISION][/FILE]`` -> ``(repo_id, revision, file)``."""
    spec = source.removeprefix("hf:")
    parts = spec.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"source={source!r}: expected hf:ORG/NAME[@REVISION][/FILE], e.g. hf:facebook/detr-resnet-50")
    name, _, revision = parts[1].partition("@")
    filename = "/".join(parts[2:]) or None
    return f"{parts[0]}/{name}", revision or None, filename


def _hf(source: str) -> Fetched:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo_id, revision, filename = parse_hf(source)
    cache = hf_cache_dir()
    local_only = offline()
    not_cached: list[str] = []

    def download(name: str) -> Path | None:
        """The cached path of ``name``, None when it is not there."""
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache, local_files_only=local_only))
        except LocalEntryNotFoundError:  # not cached, and downloads are off or the hub is unreachable
            not_cached.append(name)
        except EntryNotFoundError:  # the repository has no such file
            pass
        return None

    candidates = [filename] if filename else list(HF_WEIGHT_FILES)
    path = next((p for p in map(download, candidates) if p is not None), None)
    if path is None:
        folder = cache / f"models--{repo_id.replace('/', '--')}"
        if not not_cached:
            raise ValueError(f"{source}: the repository has none of {', '.join(candidates)}")
        why = "downloads are off (HF_HUB_OFFLINE/SIGHTKIT_OFFLINE)" if local_only else "the hub could not be reached"
        raise WeightsUnavailableError(
            f"{source}: {' or '.join(not_cached)} is not in the Hugging Face cache and {why}; put it at "
            f"{folder}/snapshots/<commit>/{not_cached[0]} with {folder}/refs/{revision or 'main'} holding <commit>"
        )
    config_path = download("config.json") if filename is None else None
    state, metadata = read_file(path)
    config = json.loads(config_path.read_text()) if config_path is not None else {}
    return Fetched(state, source, path, config=config, metadata=metadata)


# --------------------------------------------------------------------------- timm


def _timm(source: str) -> Fetched:
    name = source.removeprefix("timm:")
    try:
        import timm
    except ImportError:
        raise ImportError(f"{source} needs timm; install it with pip install 'sightkit[timm]'") from None
    try:
        model = timm.create_model(name, pretrained=True)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ValueError(f"source={source!r}: timm has no model {name!r}") from None
        raise WeightsUnavailableError(f"{source}: timm could not load its pretrained weights ({error})") from None
    except Exception as error:  # hub download failures
        raise WeightsUnavailableError(f"{source}: timm could not load its pretrained weights ({error})") from None
    return Fetched(dict(model.state_dict()), source, Path(name))
