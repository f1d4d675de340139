"""The public surface equals the golden file, and the export registry refuses mistakes."""

import difflib

import pytest

from sightkit import _api
from sightkit.api import GOLDEN_PATH, list_public


def test_public_api_matches_golden() -> None:
    current = list_public()
    golden = GOLDEN_PATH.read_text().splitlines() if GOLDEN_PATH.exists() else []
    if current != golden:
        diff = "\n".join(difflib.unified_diff(golden, current, "golden", "current", lineterm=""))
        pytest.fail(
            "The public API changed. If the change is intended, run `make api-golden` and commit "
            f"{GOLDEN_PATH.name} with it.\n{diff}"
        )


def test_namespaces_hold_exactly_the_exported_names() -> None:
    import sightkit.losses
    import sightkit.ops

    for module in (sightkit.ops, sightkit.losses):
        prefix = module.__name__.removeprefix("sightkit.") + "."
        exported = sorted(name[len(prefix) :] for name in _api.registry() if name.startswith(prefix))
        assert module.__all__ == exported
        for symbol in exported:
            assert getattr(module, symbol) is _api.registry()[prefix + symbol]


def test_contract_names_are_public() -> None:
    import sightkit.ops

    for name in ("box_convert", "box_area", "box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"):
        assert name in sightkit.ops.__all__


def test_duplicate_name_is_an_error() -> None:
    def first() -> None: ...

    def second() -> None: ...

    _api.export("ops._test_duplicate")(first)
    try:
        _api.export("ops._test_duplicate")(first)  # the same object again is harmless
        with pytest.raises(ValueError, match="already exported"):
            _api.export("ops._test_duplicate")(second)
    finally:
        _api._REGISTRY.pop("ops._test_duplicate")


@pytest.mark.parametrize("name", ["box_iou", "nonsense.box_iou", "ops.", "ops.not an identifier"])
def test_malformed_name_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match=r"namespace\.symbol"):
        _api.export(name)
