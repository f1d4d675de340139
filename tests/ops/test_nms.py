"""NMS variants: nms / batched_nms equal torchvision; diou_nms and soft_nms equal plain per-box loops."""

import importlib
import math

import pytest
import torch
import torchvision

from sightkit.ops import batched_diou_nms, batched_nms, batched_soft_nms, diou_nms, nms, soft_nms

nms_module = importlib.import_module("sightkit.ops.nms")


# --- plain references: one box at a time, Python floats ------------------------------------------


def _iou(a: list[float], b: list[float]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _diou(a: list[float], b: list[float], eps: float = 1e-7) -> float:
    enclosing_w = max(a[2], b[2]) - min(a[0], b[0])
    enclosing_h = max(a[3], b[3]) - min(a[1], b[1])
    centre_dist_sq = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
    return _iou(a, b) - centre_dist_sq / (enclosing_w**2 + enclosing_h**2 + eps)


def reference_diou_nms(boxes, scores, threshold, classes=None) -> list[int]:
    boxes, scores = boxes.tolist(), scores.tolist()
    classes = classes.tolist() if classes is not None else [0] * len(boxes)
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept, removed = [], set()
    for i in order:
        if i in removed:
            continue
        kept.append(i)
        for j in order:
            if (
                j not in removed
                and j not in kept
                and classes[j] == classes[i]
                and _diou(boxes[i], boxes[j]) > threshold
            ):
                removed.add(j)
    return kept


def reference_soft_nms(boxes, scores, sigma, score_threshold, method, iou_threshold, classes=None):
    """The paper's algorithm: select the best box, decay the others, drop those below the threshold."""
    boxes, scores = boxes.tolist(), scores.tolist()
    classes = classes.tolist() if classes is not None else [0] * len(boxes)
    remaining = [i for i in range(len(boxes)) if scores[i] >= score_threshold]
    kept, kept_scores = [], []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))
        kept.append(best)
        kept_scores.append(scores[best])
        remaining.remove(best)
        for j in remaining:
            if classes[j] != classes[best]:
                continue
            iou = _iou(boxes[best], boxes[j])
            if method == "gaussian":
                scores[j] *= math.exp(-iou * iou / sigma)
            elif iou > iou_threshold:
                scores[j] *= 1 - iou
        remaining = [j for j in remaining if scores[j] >= score_threshold]
    return kept, kept_scores


def clustered_boxes(n: int, seed: int, clusters: int = 6, dtype: torch.dtype = torch.float64):
    """Detector-like boxes: jittered copies around a few objects, some exact duplicates, some far away."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(clusters, 2, generator=g, dtype=dtype) * 200
    sizes = 10 + torch.rand(clusters, 2, generator=g, dtype=dtype) * 40
    which = torch.randint(0, clusters, (n,), generator=g)
    centre = centres[which] + torch.randn(n, 2, generator=g, dtype=dtype) * sizes[which] * 0.2
    half = sizes[which] * (0.3 + 0.4 * torch.rand(n, 2, generator=g, dtype=dtype))
    boxes = torch.cat((centre - half, centre + half), 1)
    boxes[n // 2 : n // 2 + 3] = boxes[0]  # duplicates of box 0
    scores = torch.rand(n, generator=g, dtype=dtype)
    return boxes, scores


def uniform_boxes(n: int, seed: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 300
    wh = 1 + torch.rand(n, 2, generator=g, dtype=dtype) * 60
    return torch.cat((xy, xy + wh), 1), torch.rand(n, generator=g, dtype=dtype)


# The vectorised engine has several paths; each case runs on each of them.
PATHS = {
    "default": {},
    "small bands": {"_MIN_BAND": 2},
    "sequential after one round": {"_STEP_COST": 10**12},
    "sequential only": {"_MAX_PAIRS": -1},
    "small sweep blocks": {"_BLOCK": 7},
}


@pytest.fixture(params=list(PATHS))
def engine_path(request, monkeypatch):
    for name, value in PATHS[request.param].items():
        monkeypatch.setattr(nms_module, name, value)
    return request.param


# --- nms / batched_nms ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_nms_equals_torchvision(seed, threshold) -> None:
    boxes, scores = clustered_boxes(300, seed, dtype=torch.float32)
    scores = (scores * 10).round() / 10  # many ties
    assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


@pytest.mark.parametrize("n", [0, 1, 50, 1200])  # 1200 boxes take torchvision's per-class path on CPU
def test_batched_nms_equals_torchvision(n) -> None:
    boxes, scores = clustered_boxes(n, 1, dtype=torch.float32) if n else (torch.zeros(0, 4), torch.zeros(0))
    idxs = torch.randint(0, 3, (n,))
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), expected)


def test_nms_by_hand() -> None:
    # IoU([0,0,10,10], [1,1,11,11]) = 81 / 119 = 0.68; the third box is disjoint.
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.95, 0.1])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [1, 0, 2]


def test_nms_empty_and_dtypes() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).dtype == torch.int64
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    boxes, scores = clustered_boxes(100, 3, dtype=torch.float32)
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    # Integer boxes and half scores are computed in float32; float64 stays float64.
    assert torch.equal(
        nms(boxes.double(), scores.double(), 0.5), torchvision.ops.nms(boxes.double(), scores.double(), 0.5)
    )
    half = scores.half()
    assert torch.equal(nms(boxes, half, 0.5), torchvision.ops.nms(boxes, half.float(), 0.5))
    assert torch.equal(nms(boxes.round().int(), scores, 0.5), torchvision.ops.nms(boxes.round(), scores, 0.5))
    assert expected.numel() > 1


# --- diou_nms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("threshold", [0.0, 0.4, 0.7])
def test_diou_nms_equals_reference(engine_path, seed, threshold) -> None:
    boxes, scores = clustered_boxes(120, seed)
    assert diou_nms(boxes, scores, threshold).tolist() == reference_diou_nms(boxes, scores, threshold)


@pytest.mark.parametrize("seed", range(2))
def test_batched_diou_nms_equals_reference(engine_path, seed) -> None:
    boxes, scores = clustered_boxes(120, seed)
    classes = torch.randint(0, 3, (120,), generator=torch.Generator().manual_seed(seed))
    expected = reference_diou_nms(boxes, scores, 0.4, classes)
    assert batched_diou_nms(boxes, scores, classes, 0.4).tolist() == expected


def test_diou_nms_negative_threshold_lets_disjoint_boxes_suppress() -> None:
    # Disjoint boxes have DIoU < 0: box 1 is at -144 / 584 = -0.247 from box 0, box 2 at
    # -20000 / 24200 = -0.826, so -0.3 suppresses the near neighbour only.
    boxes = torch.tensor([[0.0, 0, 10, 10], [12, 0, 22, 10], [100, 100, 110, 110]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert diou_nms(boxes, scores, -0.3).tolist() == reference_diou_nms(boxes, scores, -0.3) == [0, 2]
    assert diou_nms(boxes, scores, -0.2).tolist() == [0, 1, 2]
    boxes, scores = clustered_boxes(80, 5)
    assert diou_nms(boxes, scores, -0.1).tolist() == reference_diou_nms(boxes, scores, -0.1)


def test_diou_nms_by_hand() -> None:
    # IoU([0,0,10,10], [0,0,10,4]) = 40 / 100 = 0.4; centres (5,5) and (5,2): rho² = 9, c² = 200,
    # so DIoU = 0.4 - 0.045 = 0.355. At 0.38 plain NMS drops the second box and DIoU-NMS keeps it.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 4]])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.38).tolist() == [0]
    assert diou_nms(boxes, scores, 0.38).tolist() == [0, 1]
    assert diou_nms(boxes, scores, 0.35).tolist() == [0]


def test_diou_nms_ties_go_by_index() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10], [1, 1, 10, 10]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9])
    # Box 3 is best and suppresses 0 and 2 (IoU 0.81); 1 is disjoint.
    assert diou_nms(boxes, scores, 0.5).tolist() == [3, 1]
    # At 0.95 box 3 keeps 0 (DIoU < 0.81); the tied copies 0 and 2 (DIoU 1) keep the lower index.
    assert diou_nms(boxes, scores, 0.95).tolist() == [3, 0, 1]


# --- soft_nms ------------------------------------------------------------------------------------


def _assert_soft_equal(result, expected) -> None:
    indices, rescored = result
    assert indices.tolist() == expected[0]
    torch.testing.assert_close(rescored, torch.tensor(expected[1], dtype=rescored.dtype), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("method", "sigma", "score_threshold", "iou_threshold"),
    [
        ("gaussian", 0.5, 0.001, 0.3),
        ("gaussian", 0.1, 0.05, 0.3),
        ("linear", 0.5, 0.001, 0.3),
        ("linear", 0.5, 0.1, 0.0),
    ],
)
def test_soft_nms_equals_reference(engine_path, seed, method, sigma, score_threshold, iou_threshold) -> None:
    boxes, scores = clustered_boxes(100, seed)
    expected = reference_soft_nms(boxes, scores, sigma, score_threshold, method, iou_threshold)
    result = soft_nms(boxes, scores, sigma, score_threshold, method, iou_threshold=iou_threshold)
    _assert_soft_equal(result, expected)


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_batched_soft_nms_equals_reference(engine_path, method) -> None:
    boxes, scores = clustered_boxes(100, 7)
    classes = torch.randint(0, 3, (100,), generator=torch.Generator().manual_seed(7))
    expected = reference_soft_nms(boxes, scores, 0.5, 0.001, method, 0.3, classes)
    _assert_soft_equal(batched_soft_nms(boxes, scores, classes, method=method), expected)


def test_soft_nms_float32_sparse_boxes_equal_reference() -> None:
    boxes, scores = uniform_boxes(400, 0)
    for method in ("gaussian", "linear"):
        expected = reference_soft_nms(boxes, scores, 0.5, 0.001, method, 0.3)
        indices, rescored = soft_nms(boxes, scores, method=method)
        assert rescored.dtype == torch.float32
        assert indices.tolist() == expected[0]
        torch.testing.assert_close(rescored, torch.tensor(expected[1], dtype=torch.float32))


def test_soft_nms_by_hand() -> None:
    # IoU([0,0,10,10], [0,0,10,5]) = 0.5; the third box is disjoint.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    indices, rescored = soft_nms(boxes, scores, method="linear")
    assert indices.tolist() == [0, 2, 1]
    torch.testing.assert_close(rescored, torch.tensor([0.9, 0.7, 0.8 * 0.5]))
    indices, rescored = soft_nms(boxes, scores, sigma=0.5)
    assert indices.tolist() == [0, 2, 1]
    torch.testing.assert_close(rescored, torch.tensor([0.9, 0.7, 0.8 * math.exp(-0.25 / 0.5)]))
    # The linear decay leaves IoU <= iou_threshold alone; decayed scores under the threshold are dropped.
    assert soft_nms(boxes, scores, method="linear", iou_threshold=0.5)[1].tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert soft_nms(boxes, scores, method="linear", score_threshold=0.5)[0].tolist() == [0, 2]
    # Boxes already below the threshold are dropped too.
    assert soft_nms(boxes, scores, score_threshold=0.75)[0].tolist() == [0]


def test_soft_nms_selection_order_follows_rescored_scores() -> None:
    # Box 1 (0.8) is decayed below box 2 (0.5) by box 0, so box 2 is selected before it.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [40, 40, 50, 50]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.5], dtype=torch.float64)
    indices, rescored = soft_nms(boxes, scores, method="linear")
    assert indices.tolist() == [0, 2, 1]
    torch.testing.assert_close(rescored, torch.tensor([0.9, 0.5, 0.8 * 0.1], dtype=torch.float64))


def test_soft_nms_ties_and_identical_boxes() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3 + [[30.0, 30, 40, 40]])
    scores = torch.tensor([0.6, 0.6, 0.6, 0.6])
    indices, rescored = soft_nms(boxes, scores, method="linear")
    # The first copy and the disjoint box keep 0.6; linear decay of identical boxes is to zero.
    assert indices.tolist() == [0, 3]
    indices, rescored = soft_nms(boxes, scores, sigma=1.0, score_threshold=0.0)
    assert indices.tolist() == [0, 3, 1, 2]
    decay = math.exp(-1.0)
    torch.testing.assert_close(rescored, torch.tensor([0.6, 0.6, 0.6 * decay, 0.6 * decay * decay]))


def test_soft_nms_dense_cluster_takes_the_sequential_path() -> None:
    # 300 near-identical boxes: one local maximum per round, so the engine hands over to the loop.
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.0, 0, 100, 100]], dtype=torch.float64) + torch.rand(
        300, 4, generator=g, dtype=torch.float64
    )
    scores = torch.rand(300, generator=g, dtype=torch.float64)
    expected = reference_soft_nms(boxes, scores, 0.5, 0.001, "gaussian", 0.3)
    _assert_soft_equal(soft_nms(boxes, scores), expected)


def test_empty_inputs() -> None:
    boxes, scores = torch.zeros(0, 4), torch.zeros(0)
    for result in (
        diou_nms(boxes, scores, 0.5),
        batched_diou_nms(boxes, scores, torch.zeros(0, dtype=torch.long), 0.5),
    ):
        assert result.dtype == torch.int64 and result.numel() == 0
    indices, rescored = soft_nms(boxes, scores)
    assert indices.dtype == torch.int64 and indices.numel() == 0 and rescored.numel() == 0
    indices, _ = batched_soft_nms(boxes, scores, torch.zeros(0, dtype=torch.long))
    assert indices.numel() == 0
    # All boxes below the score threshold.
    assert soft_nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.0001]))[0].numel() == 0


def test_degenerate_boxes_do_not_interact() -> None:
    # Zero-area boxes have IoU 0 with everything: nothing is suppressed or decayed.
    boxes = torch.tensor([[5.0, 5, 5, 5], [5, 5, 5, 5], [0, 5, 10, 5]])
    scores = torch.tensor([0.3, 0.2, 0.1])
    assert diou_nms(boxes, scores, 0.5).tolist() == [0, 1, 2]
    indices, rescored = soft_nms(boxes, scores)
    assert indices.tolist() == [0, 1, 2]
    torch.testing.assert_close(rescored, scores)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: nms(torch.zeros(3, 5), torch.zeros(3), 0.5),
            ValueError,
            r"boxes must have shape \[\.\.\., 4\], got \(3, 5\)",
        ),
        (lambda: nms(torch.zeros(2, 3, 4), torch.zeros(2), 0.5), ValueError, r"boxes must have shape \[N, 4\]"),
        (lambda: nms([[0, 0, 1, 1]], torch.zeros(1), 0.5), TypeError, "boxes must be a torch.Tensor"),
        (
            lambda: nms(torch.zeros(3, 4), torch.zeros(2), 0.5),
            ValueError,
            r"scores must have shape \[N\] = \[3\].*got \(2,\)",
        ),
        (lambda: nms(torch.zeros(3, 4), [0.0] * 3, 0.5), TypeError, "scores must be a torch.Tensor"),
        (lambda: diou_nms(torch.zeros(3, 4), torch.zeros(3), "0.5"), TypeError, "iou_threshold must be a real number"),
        (lambda: diou_nms(torch.zeros(3, 4), torch.zeros(3), float("nan")), TypeError, "iou_threshold must be a real"),
        (
            lambda: batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5),
            TypeError,
            "idxs must hold integer",
        ),
        (
            lambda: batched_diou_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.long), 0.5),
            ValueError,
            r"idxs must have shape \[N\] = \[3\]",
        ),
        (lambda: soft_nms(torch.zeros(3, 4), torch.zeros(3), method="hard"), ValueError, "method must be one of"),
        (lambda: soft_nms(torch.zeros(3, 4), torch.zeros(3), sigma=0.0), ValueError, "sigma must be a positive"),
        (
            lambda: soft_nms(torch.zeros(3, 4), torch.zeros(3), score_threshold=-math.inf),
            ValueError,
            "score_threshold must be finite, got -inf",
        ),
        (
            lambda: soft_nms(torch.zeros(3, 4), torch.zeros(3), method="linear", iou_threshold=1.5),
            ValueError,
            r"iou_threshold must be in \[0, 1\], got 1.5",
        ),
        (
            lambda: soft_nms(torch.zeros(2, 4), torch.tensor([0.5, -0.1])),
            ValueError,
            "scores must be non-negative",
        ),
        (lambda: soft_nms(torch.zeros(2, 4), torch.tensor([0.5, float("nan")])), ValueError, "scores must be finite"),
        (
            lambda: diou_nms(torch.zeros(2, 4), torch.tensor([0.5, float("inf")]), 0.5),
            ValueError,
            "scores must be finite",
        ),
        (
            lambda: diou_nms(torch.tensor([[0.0, 0, 1, float("nan")]]), torch.ones(1), 0.5),
            ValueError,
            "boxes must be finite",
        ),
    ],
)
def test_bad_input_is_an_error(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()
