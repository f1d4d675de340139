"""``python -m benchmarks NAME [args...]`` runs ``benchmarks/NAME.py``'s ``main(argv)``;
``python -m benchmarks all`` runs each with its defaults; no name lists them."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> None:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m benchmarks NAME|all [args...]\nbenchmarks: " + ", ".join(names))
        return
    name, rest = argv[0], argv[1:]
    if name == "all":
        for each in names:
            print(f"\n=== {each} ===", flush=True)
            importlib.import_module(f"benchmarks.{each}").main([])
        return
    if name not in names:
        raise SystemExit(f"unknown benchmark {name!r}; available: {', '.join(names)}")
    importlib.import_module(f"benchmarks.{name}").main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
