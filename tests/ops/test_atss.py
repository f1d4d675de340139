"""ATSS assignment on hand-made anchors and boxes: the per-level candidates, the mean + std
threshold, the centre-inside rule and the resolution of anchors claimed by several boxes."""

import statistics

import pytest
import torch

from sightkit.ops import atss_assign


def grid_anchors(stride: int, cells: int, side: float) -> torch.Tensor:
    """Square anchors of ``side`` centred on the cells of a ``cells x cells`` grid, row-major."""
    centres = (torch.arange(cells, dtype=torch.float32) + 0.5) * stride
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    centre = torch.stack((xs.flatten(), ys.flatten()), dim=1)
    return torch.cat((centre - side / 2, centre + side / 2), dim=1)


def test_two_level_hand_case() -> None:
    """Level 0: stride 8, 8x8 cells, 16-pixel anchors; level 1: stride 16, 4x4 cells, 32-pixel
    anchors. The 24x24 box [8, 8, 32, 32] is centred on the level-0 cell centre (20, 20).

    Candidates (9 closest centres per level): level 0, the 3x3 cells centred at x, y in
    {12, 20, 28}, overlapping the box by {12, 16, 12} pixels per axis; level 1, the 3x3 cells at
    {8, 24, 40} (distances 12, 4, 20 from 20; the next, 56, is 36 away), overlapping by {16, 24, 8}.
    IoU = ox * oy / (576 + anchor area - ox * oy). Only the level-0 centre (IoU 256/576 = 0.444)
    and the level-1 cell (24, 24) (576/1024 = 0.5625) reach mean + std = 0.37.
    """
    anchors = torch.cat((grid_anchors(8, 8, 16.0), grid_anchors(16, 4, 32.0)))
    box = torch.tensor([[8.0, 8.0, 32.0, 32.0]])

    def iou(ox: float, oy: float, anchor_area: float) -> float:
        return ox * oy / (576 + anchor_area - ox * oy)

    level0 = [iou(ox, oy, 256) for ox in (12, 16, 12) for oy in (12, 16, 12)]
    level1 = [iou(ox, oy, 1024) for ox in (16, 24, 8) for oy in (16, 24, 8)]
    candidates = level0 + level1
    threshold = statistics.mean(candidates) + statistics.stdev(candidates)
    assert 0.3158 < threshold < 0.4444  # above the next-best candidates (1/3.. 0.316), below the two kept
    assert sorted(v for v in candidates if v >= threshold) == pytest.approx([256 / 576, 576 / 1024])

    assigned = atss_assign(anchors, [64, 16], box, topk=9)
    level0_centre = 2 * 8 + 2  # row 2, column 2 of level 0: centre (20, 20)
    level1_cell = 64 + 1 * 4 + 1  # row 1, column 1 of level 1: centre (24, 24)
    assert torch.nonzero(assigned >= 0).flatten().tolist() == [level0_centre, level1_cell]
    assert assigned[[level0_centre, level1_cell]].tolist() == [0, 0]


def far_anchors() -> torch.Tensor:
    """Four anchors far from everything below: zero-IoU candidates that set the statistics."""
    return torch.tensor(
        [[100.0, 0, 110, 10], [0, 100, 10, 110], [100, 100, 110, 110], [200, 0, 210, 10]], dtype=torch.float32
    )


def test_an_anchor_claimed_by_two_boxes_goes_to_the_one_it_overlaps_most() -> None:
    """With candidate IoUs (q, 0, 0, 0, 0) the threshold is 0.2 q + q sqrt(0.2) < q, so the anchor
    [0, 0, 10, 10] is positive for both boxes: IoU 100/120 with box 0, 1 with box 1."""
    anchors = torch.cat((torch.tensor([[0.0, 0, 10, 10]]), far_anchors()))
    boxes = torch.tensor([[0.0, 0, 10, 12], [0, 0, 10, 10]])
    assigned = atss_assign(anchors, [5], boxes, topk=5)
    assert assigned.tolist() == [1, -1, -1, -1, -1]


def test_a_centre_outside_the_box_is_never_positive() -> None:
    """IoU 0.5 is far above the threshold 0.1 + sqrt(0.05) = 0.32, but the anchor's centre lies on
    the box's bottom edge (not 0.01 inside); 0.05 pixel higher it counts."""
    box = torch.tensor([[0.0, 0, 10, 10]])
    on_edge = torch.cat((torch.tensor([[0.0, 0, 10, 20]]), far_anchors()))
    assert atss_assign(on_edge, [5], box, topk=5).tolist() == [-1] * 5
    inside = torch.cat((torch.tensor([[0.0, 0, 10, 19.9]]), far_anchors()))
    assert atss_assign(inside, [5], box, topk=5).tolist() == [0, -1, -1, -1, -1]


def test_topk_is_per_level() -> None:
    """topk=1 takes one candidate per level: the closest anchor of each of the two levels."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 12, 12], [40, 40, 50, 50], [0, 0, 9, 9]])
    box = torch.tensor([[0.0, 0, 10, 10]])
    # Level 0 = anchors 0-1 (closest: 0), level 1 = anchors 2-3 (closest: 3). IoUs 1 and 0.81:
    # threshold 0.905 + 0.134, so no candidate passes; with the level-1 anchor identical to the box, both do.
    assert atss_assign(anchors, [2, 2], box, topk=1).tolist() == [-1, -1, -1, -1]
    anchors[3] = torch.tensor([0.0, 0, 10, 10])
    assert atss_assign(anchors, [2, 2], box, topk=1).tolist() == [0, -1, -1, 0]


def test_no_boxes_and_single_candidate() -> None:
    anchors = grid_anchors(8, 2, 16.0)
    assert atss_assign(anchors, [4], torch.zeros(0, 4)).tolist() == [-1] * 4
    # One candidate in all: no spread (std 0 instead of NaN), so it is its own threshold.
    assert atss_assign(anchors[:1], [1], torch.tensor([[0.0, 0, 8, 8]])).tolist() == [0]


def test_bad_input_names_the_argument() -> None:
    anchors = grid_anchors(8, 2, 16.0)
    with pytest.raises(ValueError, match=r"num_per_level must be .* sum to the 4 anchors, got \[3\]"):
        atss_assign(anchors, [3], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="topk must be a positive integer, got 0"):
        atss_assign(anchors, [4], torch.zeros(1, 4), topk=0)
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \[\.\.\., 4\], got \(2, 3\)"):
        atss_assign(anchors, [4], torch.zeros(2, 3))
