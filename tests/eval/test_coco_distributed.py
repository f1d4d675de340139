"""CocoEvaluator under torch.distributed: two gloo processes, each with part of the images, get the
metrics of one process that saw them all; a padded repeat (DistributedSampler) counts once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sightkit.eval import CocoEvaluator, evaluate_coco

SHARDS = {0: [1, 2, 3], 1: [4, 5, 1]}  # rank 1 ends with a repeat of image 1, as DistributedSampler pads


def dataset() -> dict:
    boxes = {i: [[10.0 * i, 20, 30, 30], [100, 10.0 * i, 50, 40]] for i in range(1, 6)}
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in boxes],
        "annotations": [
            {"id": 10 * i + j, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, bs in boxes.items()
            for j, b in enumerate(bs)
        ],
        "categories": [{"id": 1, "name": "box"}],
    }


def predictions(image_id: int) -> dict[str, torch.Tensor]:
    # Box 0 shifted by image_id px (IoU falls with the id), box 1 found only on odd images.
    x, y = 10.0 * image_id + image_id, 20.0
    boxes = [[x, y, x + 30, y + 30]] + ([[100, 10.0 * image_id, 150, 10.0 * image_id + 40]] if image_id % 2 else [])
    scores = [0.5 + 0.05 * image_id] + ([0.6] if image_id % 2 else [])
    return {
        "boxes": torch.tensor(boxes),
        "scores": torch.tensor(scores),
        "labels": torch.zeros(len(boxes), dtype=torch.long),
    }


def worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        evaluator = CocoEvaluator(dataset())
        evaluator.update({i: predictions(i) for i in SHARDS[rank]})
        before = evaluator.image_ids
        metrics = evaluator.compute()
        result = {"before": before, "after": evaluator.image_ids, "metrics": metrics}
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh processes import torch: 5-10 s, more on a loaded machine
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(str(tmp_path),), nprocs=2, join=True)
    single = evaluate_coco(dataset(), {i: predictions(i) for i in range(1, 6)})
    assert 0.1 < single["AP"] < 0.9
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["before"] == sorted(SHARDS[rank])
        assert result["after"] == [1, 2, 3, 4, 5]
        assert result["metrics"] == single
