"""ops.keypoints: crop transforms and their inverse, flips, Gaussian heatmaps and their
sub-pixel decoding, OKS against pycocotools, OKS-NMS; hand values and errors."""

import math

import numpy as np
import pytest
import torch

from sightkit.data import COCO_KEYPOINT_NAMES, keypoint_flip_pairs
from sightkit.ops import (
    COCO_KEYPOINT_SIGMAS,
    affine_keypoints,
    box_to_center_size,
    decode_heatmaps,
    flip_heatmaps,
    flip_keypoints,
    get_affine_transform,
    invert_affine,
    keypoint_oks,
    oks_nms,
    render_heatmaps,
)

FLIP_PAIRS = keypoint_flip_pairs(COCO_KEYPOINT_NAMES)


def test_crop_by_hand() -> None:
    # Region centred at (50, 40), 20 x 40, to a 10 x 20 output: scale 1/2 on both axes.
    matrix = get_affine_transform(torch.tensor([50.0, 40.0]), torch.tensor([20.0, 40.0]), (10, 20))
    points = torch.tensor([[40.0, 20.0], [60.0, 60.0], [50.0, 40.0]])
    torch.testing.assert_close(affine_keypoints(points, matrix), torch.tensor([[0.0, 0.0], [10.0, 20.0], [5.0, 10.0]]))
    # Turned by 90 degrees: the window's "up" points to the image's right, so a point 10 px right
    # of the centre lands 5 px above the output's centre.
    turned = get_affine_transform(torch.tensor([50.0, 40.0]), torch.tensor([20.0, 40.0]), (10, 20), rotation=90.0)
    torch.testing.assert_close(affine_keypoints(torch.tensor([[60.0, 40.0]]), turned), torch.tensor([[5.0, 5.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crop_and_inverse_bring_keypoints_back(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    center = (torch.rand(64, 2, generator=g) * 600).to(dtype)
    size = (torch.rand(64, 2, generator=g) * 300 + 20).to(dtype)
    rotation = (torch.rand(64, generator=g) * 80 - 40).to(dtype)
    keypoints = torch.cat([torch.rand(64, 17, 2, generator=g) * 640, torch.ones(64, 17, 1)], -1).to(dtype)
    forward = get_affine_transform(center, size, (192, 256), rotation)
    back = get_affine_transform(center, size, (192, 256), rotation, inverse=True)
    crop = affine_keypoints(keypoints, forward)
    assert crop.dtype == dtype and (crop - keypoints).abs().max() > 1  # it moved them
    restored = affine_keypoints(crop, back)
    # float32 has a spacing of 6e-5 at 640 px: the round trip costs it a few units in the last place.
    assert (restored - keypoints).abs().max() < (1e-9 if dtype == torch.float64 else 2.5e-4)
    assert (restored[..., 2] == 1).all()
    torch.testing.assert_close(back, invert_affine(forward), atol=1e-5, rtol=1e-5)


def test_crop_keeps_shapes_and_angles() -> None:
    """A region with the output's aspect ratio maps by a similarity: distances scale by W / w
    whatever the rotation."""
    matrix = get_affine_transform(torch.tensor([10.0, 20.0]), torch.tensor([48.0, 64.0]), (192, 256), rotation=33.0)
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[30.0, -7.0]])
    before = (a - b).norm()
    after = (affine_keypoints(a, matrix) - affine_keypoints(b, matrix)).norm()
    torch.testing.assert_close(after, before * 4)


def test_box_to_center_size_by_hand() -> None:
    center, size = box_to_center_size(torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 90.0, 30.0]]), 0.75)
    torch.testing.assert_close(center, torch.tensor([[30.0, 40.0], [45.0, 15.0]]))
    # 40 x 40 needs height 40 / 0.75; 90 x 30 keeps its width and needs height 120; then x1.25.
    torch.testing.assert_close(size, torch.tensor([[50.0, 40 / 0.75 * 1.25], [112.5, 150.0]]))


def test_flip_keypoints_by_hand() -> None:
    points = torch.tensor([[[1.0, 2.0, 2.0], [3.0, 4.0, 1.0], [5.0, 6.0, 0.0]]])
    flipped = flip_keypoints(points, 10.0, [(1, 2)])
    torch.testing.assert_close(flipped, torch.tensor([[[9.0, 2.0, 2.0], [5.0, 6.0, 0.0], [7.0, 4.0, 1.0]]]))
    torch.testing.assert_close(flip_keypoints(flipped, 10.0, [(1, 2)]), points)
    torch.testing.assert_close(flip_keypoints(points, 0.0, [])[..., 0], -points[..., 0])


def test_flip_swaps_the_coco_left_right_pairs() -> None:
    points = torch.rand(2, 17, 3) * 100
    flipped = flip_keypoints(points, 100.0, FLIP_PAIRS)
    left_wrist, right_wrist = COCO_KEYPOINT_NAMES.index("left_wrist"), COCO_KEYPOINT_NAMES.index("right_wrist")
    torch.testing.assert_close(flipped[:, left_wrist, 0], 100 - points[:, right_wrist, 0])
    torch.testing.assert_close(flipped[:, right_wrist, 1:], points[:, left_wrist, 1:])
    torch.testing.assert_close(flipped[:, 0, 0], 100 - points[:, 0, 0])  # the nose has no pair


def test_flipped_heatmaps_are_the_heatmaps_of_flipped_keypoints() -> None:
    points = torch.rand(2, 17, 2) * torch.tensor([24.0, 32.0])
    heatmaps = render_heatmaps(points, (32, 24), sigma=2.0)
    flipped = render_heatmaps(flip_keypoints(points, 24.0, FLIP_PAIRS), (32, 24), sigma=2.0)
    torch.testing.assert_close(flip_heatmaps(heatmaps, FLIP_PAIRS), flipped)


def test_render_heatmaps_by_hand() -> None:
    heatmaps = render_heatmaps(torch.tensor([[2.5, 1.5], [0.0, 0.0]]), (3, 4), sigma=1.0)
    assert heatmaps.shape == (2, 3, 4)
    assert heatmaps[0, 1, 2] == 1.0
    torch.testing.assert_close(heatmaps[0, 1, 3], torch.tensor(math.exp(-0.5)))
    torch.testing.assert_close(heatmaps[0, 0, 3], torch.tensor(math.exp(-1.0)))
    torch.testing.assert_close(heatmaps[1, 0, 0], torch.tensor(math.exp(-0.25)))  # (0.5, 0.5) away


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_taylor_decoding_finds_a_gaussian_peak_between_cells(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    points = (torch.rand(3, 17, 2, generator=g) * torch.tensor([20.0, 28.0]) + 2).to(dtype)
    heatmaps = render_heatmaps(points, (32, 24), sigma=2.0)
    found, scores = decode_heatmaps(heatmaps, "taylor")
    assert (found - points).abs().max() < (1e-3 if dtype == torch.float32 else 1e-9)
    assert ((scores > 0.88) & (scores <= 1)).all()  # at most (0.5, 0.5) from a cell centre: >= exp(-1/16)
    # A blurred Gaussian peaks at the same place, away from the borders (the blur pads by reflection).
    inside = (points[..., 0] > 6) & (points[..., 0] < 18) & (points[..., 1] > 6) & (points[..., 1] < 26)
    blurred, _ = decode_heatmaps(heatmaps, "taylor", blur_kernel=5)
    assert inside.sum() > 10 and (blurred - points)[inside].abs().max() < 1e-3


def test_argmax_and_quarter_decoding_by_hand() -> None:
    heatmaps = torch.zeros(1, 4, 5)
    heatmaps[0, 2, 3] = 1.0  # best cell: row 2, column 3
    heatmaps[0, 2, 4] = 0.5  # right neighbour higher than the left one
    heatmaps[0, 1, 3] = 0.2  # upper neighbour higher than the lower one
    points, scores = decode_heatmaps(heatmaps, "argmax")
    torch.testing.assert_close(points, torch.tensor([[3.5, 2.5]]))
    points, _ = decode_heatmaps(heatmaps, "quarter")
    torch.testing.assert_close(points, torch.tensor([[3.75, 2.25]]))
    assert scores.tolist() == [1.0]


def test_decoding_on_the_border_and_flat_maps_stays_finite() -> None:
    heatmaps = torch.zeros(3, 8, 6)
    heatmaps[0, 0, 5] = 1.0  # a corner peak: no neighbours on two sides
    heatmaps[2] = 0.3  # flat: no curvature
    for method in ("argmax", "quarter", "taylor"):
        points, _ = decode_heatmaps(heatmaps, method)
        assert torch.isfinite(points).all()
        torch.testing.assert_close(points[0], torch.tensor([5.5, 0.5]))
        torch.testing.assert_close(points[1], torch.tensor([0.5, 0.5]))  # all zero: the first cell


def coco_keypoints_eval(gt_kpts, gt_areas, gt_boxes, dt_kpts, dt_scores):
    """pycocotools' OKS matrix [D, G] for one image (detections sorted by score)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 640, "height": 480}],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_KEYPOINT_NAMES)}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1,
                "area": float(a),
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                "keypoints": k.flatten().tolist(),
                "num_keypoints": int((k[:, 2] > 0).sum()),
                "iscrowd": 0,
            }
            for i, (k, a, b) in enumerate(zip(gt_kpts, gt_areas, gt_boxes, strict=True))
        ],
    }
    coco.createIndex()
    results = [
        {"image_id": 1, "category_id": 1, "keypoints": k.flatten().tolist(), "score": float(s)}
        for k, s in zip(dt_kpts, dt_scores, strict=True)
    ]
    evaluator = COCOeval(coco, coco.loadRes(results), "keypoints")
    evaluator.params.imgIds = [1]
    evaluator.evaluate()
    return np.asarray(evaluator.ious[(1, 1)])


def test_oks_equals_pycocotools() -> None:
    g = torch.Generator().manual_seed(2)
    gt = torch.cat([torch.rand(4, 17, 2, generator=g) * 400 + 50, torch.randint(0, 3, (4, 17, 1), generator=g)], -1)
    gt[3, :, 2] = 0  # no labelled keypoint: compared through its box
    gt[gt[..., 2] == 0, :2] = 0
    boxes = torch.tensor([[40.0, 40.0, 460.0, 460.0], [100.0, 50.0, 300.0, 400.0]] * 2)
    areas = torch.tensor([9000.0, 2500.0, 400.0, 6000.0])
    pred = torch.cat([gt[:, :, :2] + torch.randn(4, 17, 2, generator=g) * 8, torch.ones(4, 17, 1)], -1)
    pred = torch.cat([pred, torch.rand(2, 17, 3, generator=g) * 500])  # two poses far from any
    scores = torch.linspace(1.0, 0.5, len(pred))  # already in decreasing order, as COCO sorts them
    expected = coco_keypoints_eval(gt.numpy(), areas.numpy(), boxes.numpy(), pred.numpy(), scores.numpy())
    got = keypoint_oks(pred.double(), gt.double(), areas.double(), boxes=boxes.double())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert got[:4, :3].diagonal().min() > 0.05 and got.max() <= 1  # matching poses score, not trivially


def test_oks_by_hand() -> None:
    gt = torch.zeros(1, 17, 3)
    gt[0, :, 2] = 2
    pred = gt.clone()
    pred[0, 0, 0] = 1.0  # only the nose is 1 px off
    area = 100.0
    nose = math.exp(-1 / (2 * area * (2 * COCO_KEYPOINT_SIGMAS[0]) ** 2))
    torch.testing.assert_close(keypoint_oks(pred, gt, torch.tensor([area])), torch.tensor([[(16 + nose) / 17]]))
    torch.testing.assert_close(keypoint_oks(gt, gt, torch.tensor([area])), torch.ones(1, 1))
    gt[0, :, 2] = 0
    assert keypoint_oks(pred, gt, torch.tensor([area])).item() == 0.0  # nothing labelled, no box


def test_oks_nms_keeps_one_of_each_pose() -> None:
    base = torch.rand(1, 17, 2) * 100
    poses = torch.cat([base, base + 0.5, base + 60, base + 0.2])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.95])
    areas = torch.full((4,), 5000.0)
    assert oks_nms(poses, scores, areas, threshold=0.9).tolist() == [3, 2]
    assert oks_nms(poses, scores, areas, threshold=1.0).tolist() == [3, 1, 2, 0]
    assert oks_nms(poses[:0], scores[:0], areas[:0]).tolist() == []


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"center and size must be \[\.\.\., 2\]"):
        get_affine_transform(torch.zeros(3), torch.ones(2), (4, 4))
    with pytest.raises(ValueError, match=r"output_size must be \(W, H\)"):
        get_affine_transform(torch.zeros(2), torch.ones(2), (0, 4))
    with pytest.raises(ValueError, match=r"matrix must have shape \[\.\.\., 2, 3\], got \(3, 3\)"):
        affine_keypoints(torch.zeros(5, 2), torch.eye(3))
    with pytest.raises(ValueError, match="flip_pairs: pair \\(1, 20\\) is out of range for 17 keypoints"):
        flip_keypoints(torch.zeros(17, 2), 10.0, [(1, 20)])
    with pytest.raises(ValueError, match="method must be one of"):
        decode_heatmaps(torch.zeros(1, 4, 4), "soft-argmax")
    with pytest.raises(ValueError, match="blur_kernel must be 0 or an odd size, got 4"):
        decode_heatmaps(torch.zeros(1, 4, 4), blur_kernel=4)
    with pytest.raises(ValueError, match=r"sigmas must have one value per keypoint \(5\).*COCO's 17"):
        keypoint_oks(torch.zeros(1, 5, 2), torch.zeros(1, 5, 3), torch.ones(1))
    with pytest.raises(ValueError, match=r"areas must have shape \[M\] = \(1,\), got \(2,\)"):
        keypoint_oks(torch.zeros(1, 17, 2), torch.zeros(1, 17, 3), torch.ones(2))
    with pytest.raises(ValueError, match=r"boxes must have shape \[\.\.\., 4\] \(xyxy\)"):
        box_to_center_size(torch.zeros(2, 3), 0.75)
