"""A source string -> weights in sightkit's layout with full metadata, and weights files from them.

:func:`resolve_source` reads any source (:mod:`sightkit.weights.sources`), recognises its
layout from its keys, converts it and checks it strictly against the model it names;
:func:`import_weights` writes the result as a sightkit ``.safetensors`` weights file that
``predict``, ``eval``, ``export``, ``serve`` and ``sightkit.load`` read like one written by
``sightkit train``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from sightkit.weights import detr, dino, insightface, rle
from sightkit.weights.layout import Converted, fit_state_dict
from sightkit.weights.sources import SCHEMES, Fetched, fetch

#: (recognise(state), convert(fetched)) per foreign layout, tried in order.
_LAYOUTS: tuple[tuple[Callable[[Mapping[str, Tensor]], bool], Callable[[Fetched], Converted]], ...] = (
    (detr.recognise_transformers, detr.convert),
    (detr.recognise_facebookresearch, detr.convert),
    (dino.recognise, dino.convert),
    (insightface.recognise_iresnet, insightface.convert),
    (insightface.recognise_mobilefacenet, insightface.convert),
    (rle.recognise, rle.convert),
)

#: How each task passes its label count to the model builder, read from the metadata.
_TASK_ARGS: dict[str, Callable[[Mapping[str, str]], dict[str, Any]]] = {
    "detect": lambda meta: {"num_classes": len(json.loads(meta["classes"]))},
    "segment": lambda meta: {"num_classes": len(json.loads(meta["classes"]))},
    "pose": lambda meta: {"num_keypoints": len(json.loads(meta["keypoint_names"]))},
    "face": lambda meta: {"num_features": int(meta["embedding"]), "input_size": int(meta["imgsz"])},
}


def convert(fetched: Fetched) -> Converted:
    """The sightkit-layout form of a fetched checkpoint.

    A sightkit weights file (its metadata names ``task`` and ``model``) is returned as it is.

    Raises:
        ValueError: no known layout matches the keys.
    """
    meta = fetched.metadata
    if "task" in meta and "model" in meta:
        prefix = "embedder." if meta["task"] == "face" else ""
        state = {k.removeprefix(prefix): v for k, v in fetched.state.items() if k.startswith(prefix)}
        args = json.loads(meta.get("model_args", "{}"))
        return Converted("sightkit", meta["model"], args, state, dict(meta), prefix=prefix)
    for recognise, converter in _LAYOUTS:
        if recognise(fetched.state):
            return converter(fetched)
    sample = ", ".join(list(fetched.state)[:6])
    raise ValueError(
        f"{fetched.source}: the keys ({sample}, ...) match no known layout (DETR facebookresearch or transformers, "
        "IDEA-Research DINO, insightface IResNet or MobileFaceNet, RLE RegressFlow); `sightkit weights list` shows "
        "the known sources. ImageNet backbones (torchvision:, timm:) load with backbone_weights= instead"
    )


def build(converted: Converted) -> nn.Module:
    """``create_model`` for converted weights, loaded strictly, in eval mode.

    Raises:
        LayoutMismatchError: the weights do not fit the model (missing, unexpected, mis-shaped keys).
    """
    from sightkit.models import create_model

    task_args = _TASK_ARGS.get(converted.metadata.get("task", ""), lambda meta: {})(converted.metadata)
    model = create_model(converted.model, **task_args, **converted.model_args)
    what = f"{converted.metadata.get('source', 'the weights')} ({converted.family} layout)"
    model.load_state_dict(fit_state_dict(model, converted.state, what))
    return model.eval()


def resolve_source(source: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Weights in sightkit's layout and the metadata of a weights file, from any source.

    Args:
        source: a local file (a sightkit weights file or a foreign checkpoint), ``hf:ORG/NAME``,
            a URL or ``torchvision:``/``timm:`` (see :mod:`sightkit.weights.sources`).

    Returns:
        ``(state, metadata)``: the state dict of ``create_model(metadata["model"], ...)``
        (checked strictly: every key present with its shape; without a task's key prefix),
        and the str -> str metadata that ``sightkit train`` writes (``task``, ``model``,
        ``model_args``, class names, normalisation, input size; ``source`` and ``source_layout``).

    Raises:
        WeightsUnavailableError: not cached and not downloadable (one line: where to put it).
        ValueError: an unknown layout, or weights that do not fit the model they name.
    """
    converted = convert(fetch(source))
    converted.metadata.setdefault("source", source)
    model = build(converted)  # the strict check, and the dtypes of the model
    return dict(model.state_dict()), converted.metadata


def import_weights(source: str, out: str | Path, model: str = "", **metadata: str) -> dict[str, Any]:
    """Write ``source`` as a sightkit weights file.

    Args:
        source: see :func:`resolve_source`.
        out: the ``.safetensors`` file to write.
        model: the expected sightkit model (``""``: the one the layout names); a different
            name is an error rather than a silent choice.
        metadata: metadata entries to override (``imgsz="640"``, ``classes='[...]'``).

    Returns:
        A summary: ``family``, ``model``, ``model_args``, ``tensors`` (keys written),
        ``seconds`` (read, convert, check and write), ``out``.
    """
    from sightkit.engine.checkpoint import save_weights

    start = time.perf_counter()
    fetched = fetch(source)
    converted = convert(fetched)
    if model and model != converted.model:
        raise ValueError(
            f"model={model!r} does not match {source}: its layout ({converted.family}) is a {converted.model!r}"
        )
    converted.metadata.setdefault("source", source)
    converted.metadata.update({k: str(v) for k, v in metadata.items()})
    network = build(converted)
    holder: nn.Module = network
    if converted.prefix:
        # Face weights files keep the embedder under its own name (the classifier would sit beside it).
        holder = nn.Module()
        holder.add_module(converted.prefix.rstrip("."), network)
    path = save_weights(holder, out, metadata=converted.metadata)
    return {
        "family": converted.family,
        "model": converted.model,
        "model_args": converted.model_args,
        "tensors": len(converted.state),
        "seconds": time.perf_counter() - start,
        "out": str(path),
    }


def is_weights_file(source: str | Path) -> bool:
    """Whether ``source`` is a local sightkit weights file (a ``.safetensors`` whose metadata names a task)."""
    path = Path(source)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return "task" in (handle.metadata() or {})
    except Exception:  # a damaged or foreign file: not one of ours
        return False


def as_weights_file(source: str | Path) -> Path:
    """A sightkit weights file for ``source``: the file itself when it is one, else the source
    imported once into ``$SIGHTKIT_CACHE/weights`` (see :func:`sightkit.data.cache_dir`) and
    reused while the source is unchanged. ``sightkit.load(SOURCE)`` goes through it, so that
    ``sightkit.load("hf:facebook/detr-resnet-50")`` works like a weights file.

    Raises:
        See :func:`import_weights`.
    """
    if is_weights_file(source):
        return Path(source)
    from sightkit.data.formats import cache_dir

    key = str(source)
    path = Path(source).expanduser()
    if not str(source).startswith(SCHEMES) and path.exists():
        # A local checkpoint: a new file at the same path is a new import.
        stat = path.stat()
        key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(source)).strip("_")[-80:]
    out = cache_dir() / "weights" / f"{name}-{digest}.safetensors"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        import_weights(str(source), out)
    return out
