"""Every task's training config keeps the best evaluation as best.pt: its metric improves upwards."""

import pytest

from sightkit.tasks.registry import get_task, list_tasks


@pytest.mark.parametrize("name", list_tasks())
def test_best_metric_improves_the_way_best_mode_says(name: str) -> None:
    config = get_task(name).train_config()
    # Losses fall and scores (AP, mIoU, accuracy) rise: a "min" on a score would keep the worst checkpoint.
    expected = "min" if "loss" in config.best_metric else "max"
    assert config.best_mode == expected, f"best_metric={config.best_metric!r} with best_mode={config.best_mode!r}"
