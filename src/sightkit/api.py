"""List sightkit's public names with their signatures, and keep the golden file.

``python -m sightkit.api`` prints the public surface; ``python -m sightkit.api --write``
(``make api-golden``) rewrites the golden file that ``tests/test_api.py`` compares with.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
from pathlib import Path

from sightkit._api import NAMESPACES, TOP_LEVEL_MODULES, registry

GOLDEN_PATH = Path(__file__).resolve().parents[2] / "tests" / "golden" / "public_api.txt"


def import_namespaces() -> list[str]:
    """Import every namespace package that exists, which runs all ``@export`` declarations."""
    found = []
    for namespace in NAMESPACES:
        module = f"sightkit.{namespace}"
        if importlib.util.find_spec(module) is not None:
            getattr(importlib.import_module(module), "__all__", None)  # a lazy namespace imports its modules here
            found.append(module)
    for module in TOP_LEVEL_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
            found.append(module)
    return found


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj, eval_str=True))  # type: ignore[arg-type]
    except (NameError, TypeError):
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except ValueError:  # builtins without a signature
        return "(...)"


def describe(name: str, obj: object) -> list[str]:
    """The golden-file lines of one public name: its kind and signature, and for
    ``nn.Module`` classes also the signature of ``forward``."""
    if inspect.isclass(obj):
        lines = [f"class {name}{_signature(obj)}"]
        forward = getattr(obj, "forward", None)
        if forward is not None and "forward" in vars(obj):
            lines.append(f"    {name}.forward{_signature(forward)}")
        return lines
    if callable(obj):
        return [f"def {name}{_signature(obj)}"]
    return [f"{name}: {type(obj).__name__}"]


def list_public() -> list[str]:
    """Every public name with its signature, sorted by name, one or two lines each."""
    import_namespaces()
    lines: list[str] = []
    for name, obj in sorted(registry().items()):
        lines.extend(describe(name, obj))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN_PATH}")
    args = parser.parse_args(argv)
    text = "\n".join(list_public()) + "\n"
    if args.write:
        GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN_PATH.write_text(text)
        print(f"wrote {GOLDEN_PATH} ({text.count(chr(10))} lines)")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
