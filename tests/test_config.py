"""Typed configs: YAML scalars, type checks, config files, close-match suggestions."""

from dataclasses import dataclass, field
from typing import Any

import pytest

from sightkit.config import ConfigError, build_config, config_help, save_config


@dataclass
class Example:
    out: str = field(default="runs/x", metadata={"help": "output folder"})
    images: int = field(default=10, metadata={"help": "number of images"})
    lr: float = 1e-4
    flip: bool = True
    sizes: tuple[int, ...] = (320, 352)
    device: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def test_defaults_and_overrides() -> None:
    tokens = ["images=50", "lr=3e-4", "flip=false", "sizes=[256, 288]", "out=007", "overrides={depth: 3, bn: false}"]
    cfg = build_config(Example, tokens)
    assert cfg == Example(
        out="007", images=50, lr=3e-4, flip=False, sizes=(256, 288), overrides={"depth": 3, "bn": False}
    )


def test_int_accepted_as_float_and_null_as_none() -> None:
    cfg = build_config(Example, ["lr=1", "device=null"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.device is None


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("imgaes=3", "did you mean 'images'"),
        ("images=3.5", "images must be an integer, got '3.5'"),
        ("flip=maybe", "flip must be true or false"),
        ("images", "expected key=value"),
        ("lr=abc", "lr must be a number, got 'abc'"),
        ("overrides=depth:3", r"overrides must be a mapping such as '\{name: value, ...\}', got depth:3"),
    ],
)
def test_bad_input_names_the_key(token: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(Example, [token])


def test_yaml_file_is_overridden_by_command_line(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("images: 7\nlr: 0.5\n")
    cfg = build_config(Example, [f"config={path}", "lr=0.25"])
    assert (cfg.images, cfg.lr) == (7, 0.25)
    path.write_text("imagess: 7\n")
    with pytest.raises(ConfigError, match=r"unknown key 'imagess' in .*did you mean 'images'"):
        build_config(Example, [f"config={path}"])


def test_saved_config_round_trips(tmp_path) -> None:
    cfg = build_config(Example, ["images=3", "sizes=[1, 2]", "overrides={depth: 3, names: [a, b]}"])
    save_config(cfg, tmp_path / "c.yaml")
    assert build_config(Example, [f"config={tmp_path / 'c.yaml'}"]) == cfg


def test_help_lists_every_key_with_its_text() -> None:
    text = config_help(Example)
    assert "images=10" in text and "number of images" in text
    assert len(text.splitlines()) == 7 and "overrides={}" in text
