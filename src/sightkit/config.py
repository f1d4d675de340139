"""Typed configs: dataclass defaults, overridden by a YAML file, overridden by ``key=value``.

Every command-line mode describes its settings as a dataclass whose fields carry a
``help`` text in their metadata (:func:`setting` writes such a field)::

    @dataclass
    class SynthConfig:
        out: str = setting("runs/data/shapes", "output folder")
        images: int = setting(200, "number of images")

    cfg = build_config(SynthConfig, ["images=50", "out=/tmp/x"])

Values are parsed as YAML scalars (``yaml.safe_load``), never ``eval``-ed, and checked
against the field's type. ``config=FILE.yaml`` loads a mapping whose values the other keys
override. An unknown key is an error that suggests the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from PIL import Image

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that does not exist, cannot be parsed, or has the wrong type."""


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A dataclass field with a default (or, for a list or dict, a ``factory`` such as ``dict``)
    and the ``help`` text :func:`config_help` prints."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def with_defaults(**defaults: Any) -> Any:
    """Class decorator, placed under ``@dataclass``: other defaults for keys the class inherits,
    which keep their type, help and place in the key order::

        @dataclass
        @with_defaults(out="runs/detect/train", epochs=50)
        class DetectConfig(TaskConfig): ...

    Raises:
        ConfigError: a key that no base class has.
    """

    def apply(cls: type[T]) -> type[T]:
        bases = [base for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)]
        inherited = {f.name: f for base in bases for f in dataclasses.fields(base)}
        annotations = inspect.get_annotations(cls)
        cls.__annotations__ = {**{name: inherited[name].type for name in defaults if name in inherited}, **annotations}
        for name, value in defaults.items():
            if name not in inherited:
                raise _unknown_key(name, list(inherited), f" for {cls.__name__}'s defaults")
            default = setting(factory=lambda v=value: type(v)(v)) if isinstance(value, list | dict) else setting(value)
            default.metadata = inherited[name].metadata
            setattr(cls, name, default)
        return cls

    return apply


DEVICE_HELP = "cpu, cuda, cuda:K ('' : cuda if available)"
PRECISION_HELP = "inference precision: fp32 or bf16 (autocast; fast on CPUs with AVX512-BF16/AMX and Ampere+ GPUs)"


@dataclasses.dataclass
class EvalConfig:
    """The keys every ``sightkit eval TASK`` shares; a task's eval config subclasses it and
    redeclares a key to change its default or help."""

    weights: str = setting("", "a .safetensors file written by sightkit train")
    data: str = setting("", "dataset folder")
    split: str = setting("val", "split to evaluate")
    out: str = setting("", "folder for metrics.json and plots ('' : next to weights)")
    batch: int = setting(8, "images per forward pass")
    device: str = setting("", DEVICE_HELP)
    workers: int = setting(0, "DataLoader worker processes")
    precision: str = setting("fp32", PRECISION_HELP)


@dataclasses.dataclass
class PredictConfig:
    """The keys every ``sightkit predict TASK`` shares (see :class:`EvalConfig`)."""

    weights: str = setting("", "a .safetensors file written by sightkit train")
    source: str = setting("", "image, folder, glob, video or http(s) URL")
    out: str = setting("runs/predict", "folder for the pictures (or video) and predictions.jsonl")
    conf: float = setting(0.5, "keep predictions scoring at least this")
    batch: int = setting(1, "images per forward pass")
    device: str = setting("", DEVICE_HELP)
    on_error: str = setting("skip", "an unreadable file: skip (reported, counted) or stop")
    max_pixels: int = setting(
        Image.MAX_IMAGE_PIXELS or 0, "largest width*height of an image read (larger: unreadable; 0: any)"
    )
    save: bool = setting(True, "draw the predictions into pictures (or a video) in out")
    precision: str = setting("fp32", PRECISION_HELP)
    annotations: str = setting("", "COCO JSON whose image ids predictions.json (boxes) uses ('' : position in source)")


def parse_pairs(tokens: Sequence[str]) -> dict[str, str]:
    """Split ``["a=1", "b=x"]`` into ``{"a": "1", "b": "x"}``; a token without ``=`` is an error."""
    pairs: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {token!r}")
        if key in pairs:
            raise ConfigError(f"key {key!r} is given twice")
        pairs[key] = value
    return pairs


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _unknown_key(key: str, valid: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown key {key!r}{where}{hint}")


def _coerce(key: str, value: Any, hint: Any, raw: str | None) -> Any:
    """Check ``value`` (already YAML-parsed; ``raw`` is its text when it came from the
    command line) against the type ``hint`` and convert where it is lossless."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg, raw)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str) and raw is not None:
            value = yaml.safe_load(raw)
        if not isinstance(value, list | tuple):
            value = [value]
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        items = [_coerce(key, v, item_hint, None) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            shown = raw if raw is not None else repr(value)
            raise ConfigError(f"{key} must be a mapping such as '{{name: value, ...}}', got {shown}")
        return dict(value)
    if hint is Any:
        return value
    if hint is str:
        return raw if raw is not None else ("" if value is None else str(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {raw if raw is not None else value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {raw if raw is not None else value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {raw if raw is not None else value!r}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{key} must be of type {getattr(hint, '__name__', hint)}, got {value!r}")


def build_config(cls: type[T], tokens: Sequence[str] = (), **defaults: Any) -> T:
    """Build a ``cls`` dataclass from its defaults, ``defaults`` (set by the caller), a YAML
    file named by ``config=...`` and the ``key=value`` tokens, in increasing priority."""
    pairs = parse_pairs(tokens)
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in defaults.items():
        if key not in fields:
            raise _unknown_key(key, list(fields), "")
        values[key] = value
    config_path = pairs.pop("config", None)
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of key: value, got {type(loaded).__name__}")
        for key, value in loaded.items():
            if key not in fields:
                raise _unknown_key(str(key), list(fields), f" in {path}")
            values[key] = _coerce(key, value, hints[key], None)
    for key, raw in pairs.items():
        if key not in fields:
            raise _unknown_key(key, [*fields, "config"], "")
        try:
            parsed = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as error:
            raise ConfigError(f"{key}: cannot parse {raw!r} ({error.__class__.__name__})") from None
        values[key] = _coerce(key, parsed, hints[key], raw)
    return cls(**values)


def config_help(cls: type) -> str:
    """One line per key: name, type, default and the ``help`` text of its field."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        )
        type_name = getattr(hints[f.name], "__name__", str(hints[f.name]))
        setting = f"{f.name}={default}"
        lines.append(f"  {setting:<30} {type_name:<10} {f.metadata.get('help', '')}")
    return "\n".join(lines)


def save_config(config: object, path: str | Path) -> None:
    """Write the resolved config as YAML (tuples as lists), so that ``config=path`` reproduces it."""
    data = dataclasses.asdict(config)  # type: ignore[call-overload]
    text = yaml.safe_dump(_plain(data), sort_keys=False)
    Path(path).write_text(text)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
