"""Names in the metric tables are shown as written: a class called ``[red]car[/red]`` is not
read as Rich markup (which would hide the brackets or fail on an unbalanced ``[/x]``)."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from sightkit.eval.coco import CocoEvaluator
from sightkit.eval.pose import keypoint_error_table
from sightkit.eval.segmentation import SegmentationEvaluator

NAMES = ["[red]car[/red]", "bus[/b]"]


def _text(table: object) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_coco_per_class_table_shows_names_verbatim() -> None:
    rows = [
        {"name": name, "category_id": i + 1, "label": i, "gt": 3, "AP": 0.5, "AP50": 0.7, "AP75": -1.0}
        for i, name in enumerate(NAMES)
    ]
    text = _text(CocoEvaluator.per_class_table(SimpleNamespace(iou_type="bbox", per_class_ap=lambda: rows)))
    assert all(name in text for name in NAMES)


def test_segmentation_per_class_table_shows_names_verbatim() -> None:
    rows = [{"name": name, "IoU": 0.25, "accuracy": float("nan"), "pixels": 10} for name in NAMES]
    text = _text(SegmentationEvaluator.per_class_table(SimpleNamespace(per_class=lambda: rows)))
    assert all(name in text for name in NAMES)
    assert "0.2500" in text


def test_keypoint_error_table_shows_names_verbatim() -> None:
    rows = [
        {"name": name, "labelled": 4, "mean_px": 1.0, "median_px": 1.0, "mean_norm": 0.1, "pck": 0.5} for name in NAMES
    ]
    assert all(name in _text(keypoint_error_table(rows)) for name in NAMES)
