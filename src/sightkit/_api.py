"""The export decorator and the registry of public names.

A public name is declared where the object is defined::

    @export("ops.box_iou")
    def box_iou(boxes1, boxes2): ...

and each namespace package (``sightkit.ops``, ``sightkit.losses``, ...) is filled from the
registry by :func:`build_namespace`. The whole public surface, with signatures, is listed
by :func:`sightkit.api.list_public` and compared with a golden file by the test suite, so
that an API change is a visible diff in review (the idea of TensorFlow's ``tf_export``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Namespaces a public name may live in; the first component of every exported name.
NAMESPACES = ("ops", "losses", "nn", "models", "data", "eval", "engine", "tasks")
#: Modules that export top-level names (``@export("sightkit.load")`` is ``sightkit.load``).
TOP_LEVEL_MODULES = ("sightkit.predictor", "sightkit.results")

_REGISTRY: dict[str, object] = {}


def export(*names: str) -> Callable[[T], T]:
    """Declare ``names`` (``"namespace.symbol"``, or ``"sightkit.symbol"`` for a top-level name)
    as public names of the decorated object.

    Raises:
        ValueError: a name has no known namespace, or is already taken by another object.
    """
    if not names:
        raise ValueError("export() needs at least one name, e.g. @export('ops.box_iou')")
    for name in names:
        namespace, _, symbol = name.partition(".")
        if namespace not in (*NAMESPACES, "sightkit") or not symbol.isidentifier():
            raise ValueError(f"export name must be 'namespace.symbol' with namespace in {NAMESPACES}, got {name!r}")

    def decorate(obj: T) -> T:
        for name in names:
            current = _REGISTRY.get(name)
            if current is not None and current is not obj:
                raise ValueError(
                    f"public name {name!r} is already exported by {_describe(current)}; "
                    f"cannot export it again for {_describe(obj)}"
                )
            _REGISTRY[name] = obj
        return obj

    return decorate


def registry() -> dict[str, object]:
    """A copy of the registry: public name -> object."""
    return dict(_REGISTRY)


def build_namespace(module_name: str, namespace: dict[str, object]) -> list[str]:
    """Put every object exported under ``module_name``'s namespace into ``namespace``.

    Called at the end of a namespace package's ``__init__`` (after importing its modules,
    which runs their ``@export`` decorators) as ``__all__ = build_namespace(__name__, globals())``.

    Returns:
        The sorted public symbols, for ``__all__``.
    """
    prefix = module_name.removeprefix("sightkit.") + "."
    symbols = []
    for name, obj in _REGISTRY.items():
        if name.startswith(prefix) and "." not in name[len(prefix) :]:
            symbol = name[len(prefix) :]
            namespace[symbol] = obj
            symbols.append(symbol)
    return sorted(symbols)


def _describe(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
