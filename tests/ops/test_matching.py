"""linear_sum_assignment against brute force, and HungarianMatcher against an independently
built cost (torchvision's GIoU, explicit formulas in float64) solved by scipy."""

import itertools
import math

import numpy as np
import pytest
import scipy.optimize
import torch
import torchvision

from sightkit.ops import HungarianMatcher, linear_sum_assignment


def brute_force_minimum(cost: np.ndarray) -> float:
    """Least total cost over all pairings of min(N, M) rows with distinct columns."""
    if cost.shape[0] > cost.shape[1]:
        cost = cost.T
    rows, cols = cost.shape
    if rows == 0:
        return 0.0
    return min(sum(cost[i, perm[i]] for i in range(rows)) for perm in itertools.permutations(range(cols), rows))


def check_is_assignment(rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]) -> None:
    assert rows.dtype == cols.dtype == torch.int64
    assert len(rows) == len(cols) == min(shape)
    assert torch.equal(rows, rows.sort().values)
    assert len(set(rows.tolist())) == len(set(cols.tolist())) == min(shape)
    assert all(0 <= r < shape[0] for r in rows.tolist()) and all(0 <= c < shape[1] for c in cols.tolist())


# --- linear_sum_assignment ---------------------------------------------------------------


def test_lsap_hand_example() -> None:
    # Rows 0, 1, 2 to columns 1, 0, 2 cost 1 + 2 + 2 = 5; every other permutation costs more.
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    rows, cols = linear_sum_assignment(cost)
    assert rows.tolist() == [0, 1, 2]
    assert cols.tolist() == [1, 0, 2]


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 5), (2, 6), (6, 2), (4, 7), (7, 3), (1, 5), (5, 1)])
def test_lsap_equals_brute_force(shape: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    for _ in range(5):
        cost = torch.randn(shape, generator=generator, dtype=torch.float64)
        rows, cols = linear_sum_assignment(cost)
        check_is_assignment(rows, cols, shape)
        assert cost[rows, cols].sum().item() == pytest.approx(brute_force_minimum(cost.numpy()), abs=1e-12)


def test_lsap_integer_costs_with_ties() -> None:
    cost = torch.randint(0, 3, (5, 6), generator=torch.Generator().manual_seed(1))
    rows, cols = linear_sum_assignment(cost)
    check_is_assignment(rows, cols, (5, 6))
    assert cost[rows, cols].sum().item() == brute_force_minimum(cost.numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_lsap_low_precision_dtypes(dtype: torch.dtype) -> None:
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]], dtype=dtype)
    assert linear_sum_assignment(cost)[1].tolist() == [1, 0, 2]


@pytest.mark.parametrize("shape", [(0, 0), (0, 4), (4, 0)])
def test_lsap_empty(shape: tuple[int, int]) -> None:
    rows, cols = linear_sum_assignment(torch.zeros(shape))
    assert rows.dtype == cols.dtype == torch.int64
    assert rows.numel() == cols.numel() == 0


def test_lsap_ignores_autograd() -> None:
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    rows, cols = linear_sum_assignment(cost)
    assert cols.tolist() == [0, 1]
    assert not rows.requires_grad


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_lsap_non_finite_raises_with_context(bad: float) -> None:
    cost = torch.ones(3, 4)
    cost[2, 1] = bad
    with pytest.raises(ValueError, match=r"cost of image 3 must be finite.*1 non-finite.*at \[2, 1\]"):
        linear_sum_assignment(cost, context="image 3")
    with pytest.raises(ValueError, match=r"^cost must be finite"):
        linear_sum_assignment(cost)


def test_lsap_bad_input() -> None:
    with pytest.raises(TypeError, match=r"cost must be a torch.Tensor.*got ndarray"):
        linear_sum_assignment(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"cost must have shape \[N, M\], got \(2, 2, 2\)"):
        linear_sum_assignment(torch.zeros(2, 2, 2))
    with pytest.raises(TypeError, match=r"cost must be a real tensor, got dtype torch.complex64"):
        linear_sum_assignment(torch.zeros(2, 2, dtype=torch.complex64))


# --- HungarianMatcher: an independent reference ---------------------------------------------


def reference_cost(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    labels: torch.Tensor,
    boxes: torch.Tensor,
    weights: tuple[float, float, float],
    class_cost: str,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """[Q, T] cost of one image in float64, from the formulas of DETR / Deformable DETR."""
    logits, pred_boxes, boxes = logits.double(), pred_boxes.double(), boxes.double()
    if class_cost == "ce":
        classes = -torch.softmax(logits, -1)[:, labels]
    else:
        p = torch.sigmoid(logits[:, labels])
        positive = alpha * (1 - p) ** gamma * -torch.log(p)
        negative = (1 - alpha) * p**gamma * -torch.log(1 - p)
        classes = positive - negative
    l1 = (pred_boxes[:, None, :] - boxes[None, :, :]).abs().sum(-1)
    to_xyxy = torchvision.ops.box_convert
    giou = torchvision.ops.generalized_box_iou(to_xyxy(pred_boxes, "cxcywh", "xyxy"), to_xyxy(boxes, "cxcywh", "xyxy"))
    return weights[0] * classes + weights[1] * l1 - weights[2] * giou


def random_batch(
    sizes: list[int], queries: int, classes: int, seed: int
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(seed)

    def cxcywh(n: int) -> torch.Tensor:
        centres = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        sizes_ = torch.rand(n, 2, generator=generator) * 0.3 + 0.02
        return torch.cat([centres, sizes_], dim=1)

    outputs = {
        "pred_logits": torch.randn(len(sizes), queries, classes, generator=generator) * 2,
        "pred_boxes": torch.stack([cxcywh(queries) for _ in sizes]) if sizes else torch.zeros(0, queries, 4),
    }
    targets = [{"labels": torch.randint(0, classes, (t,), generator=generator), "boxes": cxcywh(t)} for t in sizes]
    return outputs, targets


@pytest.mark.parametrize(
    ("class_cost", "weights"),
    [("ce", (1.0, 5.0, 2.0)), ("focal", (2.0, 5.0, 2.0)), ("ce", (0.5, 0.0, 3.0)), ("focal", (1.0, 1.0, 0.0))],
)
def test_matcher_total_cost_is_scipy_optimum(class_cost: str, weights: tuple[float, float, float]) -> None:
    sizes = [3, 0, 12, 1, 20, 7]
    outputs, targets = random_batch(sizes, queries=20, classes=9, seed=7)
    matcher = HungarianMatcher(*weights, class_cost=class_cost)
    matches = matcher(outputs, targets)
    assert len(matches) == len(sizes)
    for b, ((pred_idx, tgt_idx), target) in enumerate(zip(matches, targets, strict=True)):
        cost = reference_cost(
            outputs["pred_logits"][b], outputs["pred_boxes"][b], target["labels"], target["boxes"], weights, class_cost
        )
        check_is_assignment(pred_idx, tgt_idx, tuple(cost.shape))
        rows, cols = scipy.optimize.linear_sum_assignment(cost.numpy())
        assert cost[pred_idx, tgt_idx].sum().item() == pytest.approx(cost.numpy()[rows, cols].sum(), abs=1e-5)


@pytest.mark.parametrize("class_cost", ["ce", "focal"])
def test_cost_matrices_equal_reference(class_cost: str) -> None:
    outputs, targets = random_batch([4, 0, 6], queries=8, classes=5, seed=3)
    matcher = HungarianMatcher(1.5, 4.0, 2.5, class_cost=class_cost, alpha=0.3, gamma=1.5)
    blocks = matcher.cost_matrices(outputs, targets)
    assert len(blocks) == 3
    for b, (block, target) in enumerate(zip(blocks, targets, strict=True)):
        expected = reference_cost(
            outputs["pred_logits"][b],
            outputs["pred_boxes"][b],
            target["labels"],
            target["boxes"],
            (1.5, 4.0, 2.5),
            class_cost,
            alpha=0.3,
            gamma=1.5,
        )
        assert block.shape == expected.shape
        torch.testing.assert_close(block.double(), expected, rtol=1e-5, atol=1e-5)


def test_result_of_an_image_does_not_depend_on_the_batch() -> None:
    sizes = [5, 0, 9, 2]
    outputs, targets = random_batch(sizes, queries=12, classes=6, seed=11)
    matcher = HungarianMatcher()
    together = matcher(outputs, targets)
    for b in range(len(sizes)):
        alone = matcher({key: value[b : b + 1] for key, value in outputs.items()}, targets[b : b + 1])
        assert torch.equal(alone[0][0], together[b][0]) and torch.equal(alone[0][1], together[b][1])
    reversed_ = matcher({key: value.flip(0) for key, value in outputs.items()}, targets[::-1])
    for b in range(len(sizes)):
        assert torch.equal(reversed_[len(sizes) - 1 - b][0], together[b][0])
        assert torch.equal(reversed_[len(sizes) - 1 - b][1], together[b][1])


def test_images_without_targets() -> None:
    outputs, targets = random_batch([0, 0], queries=5, classes=3, seed=0)
    for pred_idx, tgt_idx in HungarianMatcher()(outputs, targets):
        assert pred_idx.dtype == tgt_idx.dtype == torch.int64
        assert pred_idx.numel() == tgt_idx.numel() == 0
    assert [block.shape for block in HungarianMatcher().cost_matrices(outputs, targets)] == [(5, 0), (5, 0)]
    empty_batch = {"pred_logits": torch.zeros(0, 5, 3), "pred_boxes": torch.zeros(0, 5, 4)}
    assert HungarianMatcher()(empty_batch, []) == []


def test_forward_solves_cost_matrices() -> None:
    outputs, targets = random_batch([4, 9, 0], queries=7, classes=5, seed=8)
    matcher = HungarianMatcher(class_cost="focal")
    for (pred_idx, tgt_idx), cost in zip(
        matcher(outputs, targets), matcher.cost_matrices(outputs, targets), strict=True
    ):
        rows, cols = linear_sum_assignment(cost)
        assert torch.equal(pred_idx, rows) and torch.equal(tgt_idx, cols)


def test_no_queries_match_nothing() -> None:
    outputs, targets = random_batch([3, 0], queries=0, classes=4, seed=1)
    for pred_idx, tgt_idx in HungarianMatcher()(outputs, targets):
        assert pred_idx.numel() == tgt_idx.numel() == 0


def test_more_targets_than_queries_leaves_the_costliest_unmatched() -> None:
    # L1 cost only: query 0 sits on target 2, query 1 on target 0; target 1 is far from both,
    # so it is the one left out (total 0 against at least 0.8 for any pairing that uses it).
    outputs = {
        "pred_logits": torch.zeros(1, 2, 3),
        "pred_boxes": torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]]),
    }
    targets = [
        {
            "labels": torch.tensor([0, 1, 2]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]]),
        }
    ]
    (pred_idx, tgt_idx) = HungarianMatcher(cost_class=0.0, cost_bbox=1.0, cost_giou=0.0)(outputs, targets)[0]
    assert pred_idx.tolist() == [0, 1]
    assert tgt_idx.tolist() == [2, 0]


def test_ce_class_cost_decides_between_identical_boxes() -> None:
    # Equal boxes everywhere, so only -softmax(logits)[label] differs. Query 0 gives class 1
    # probability 0.6 and class 2 probability 0.3; query 1 gives 0.1 and 0.5. Matching target
    # (label 1) to query 0 and target (label 2) to query 1 costs -1.1; the swap costs -0.4.
    probs = torch.tensor([[[0.1, 0.6, 0.3], [0.4, 0.1, 0.5]]])
    box = torch.tensor([0.5, 0.5, 0.2, 0.2])
    outputs = {"pred_logits": probs.log(), "pred_boxes": box.expand(1, 2, 4)}
    targets = [{"labels": torch.tensor([2, 1]), "boxes": box.expand(2, 4)}]
    matcher = HungarianMatcher()
    assert [t.tolist() for t in matcher(outputs, targets)[0]] == [[0, 1], [1, 0]]
    expected_class = -torch.tensor([[0.3, 0.6], [0.5, 0.1]])
    # Identical boxes: L1 0, GIoU 1, so the box part is -cost_giou = -2 everywhere.
    torch.testing.assert_close(matcher.cost_matrices(outputs, targets)[0], expected_class - 2.0)


def test_focal_class_cost_by_hand() -> None:
    # One query, logits 0 and 2 for the two target classes; class cost only.
    outputs = {"pred_logits": torch.tensor([[[0.0, 2.0, -100.0, 100.0]]]), "pred_boxes": torch.rand(1, 1, 4)}
    targets = [{"labels": torch.tensor([0, 1, 2, 3]), "boxes": torch.rand(4, 4)}]
    cost = HungarianMatcher(1.0, 0.0, 0.0, class_cost="focal").cost_matrices(outputs, targets)[0][0]
    # logit 0: p = 1/2, cost = 0.25 * 0.25 * ln 2 - 0.75 * 0.25 * ln 2 = -ln(2) / 8.
    assert cost[0].item() == pytest.approx(-math.log(2) / 8, rel=1e-6)
    # logit 2: p = 1 / (1 + e^-2), -ln p = ln(1 + e^-2), -ln(1 - p) = ln(1 + e^2).
    p = 1 / (1 + math.exp(-2))
    expected = 0.25 * (1 - p) ** 2 * math.log1p(math.exp(-2)) - 0.75 * p**2 * math.log1p(math.exp(2))
    assert cost[1].item() == pytest.approx(expected, rel=1e-6)
    # Saturated logits stay finite: -100 -> 0.25 * 100, +100 -> -0.75 * 100.
    assert cost[2].item() == pytest.approx(25.0, rel=1e-6)
    assert cost[3].item() == pytest.approx(-75.0, rel=1e-6)


def test_focal_with_gamma_0_alpha_half_is_minus_half_the_logit() -> None:
    # 0.5 * (-log p) - 0.5 * (-log(1 - p)) = 0.5 * log((1 - p) / p) = -x / 2.
    outputs, targets = random_batch([6], queries=4, classes=5, seed=5)
    cost = HungarianMatcher(1.0, 0.0, 0.0, class_cost="focal", alpha=0.5, gamma=0.0).cost_matrices(outputs, targets)[0]
    torch.testing.assert_close(cost, -0.5 * outputs["pred_logits"][0][:, targets[0]["labels"]])


def test_half_precision_inputs_cost_in_float32() -> None:
    outputs, targets = random_batch([4], queries=6, classes=3, seed=2)
    half = {key: value.bfloat16() for key, value in outputs.items()}
    cost = HungarianMatcher().cost_matrices(half, targets)[0]
    assert cost.dtype == torch.float32
    expected = HungarianMatcher().cost_matrices({key: value.float() for key, value in half.items()}, targets)[0]
    torch.testing.assert_close(cost, expected)


def test_matcher_does_not_track_gradients() -> None:
    outputs, targets = random_batch([3], queries=4, classes=3, seed=4)
    outputs = {key: value.requires_grad_() for key, value in outputs.items()}
    assert not HungarianMatcher().cost_matrices(outputs, targets)[0].requires_grad
    assert list(HungarianMatcher().parameters()) == []


# --- HungarianMatcher: errors -------------------------------------------------------------


def test_nan_in_logits_names_the_image() -> None:
    outputs, targets = random_batch([2, 3, 4], queries=5, classes=4, seed=0)
    outputs["pred_logits"][2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"image 2 must be finite, but outputs\['pred_logits'\]\[2\] hold NaN or Inf"):
        HungarianMatcher()(outputs, targets)


def test_nan_in_target_boxes_names_the_image() -> None:
    outputs, targets = random_batch([2, 3], queries=5, classes=4, seed=0)
    targets[1]["boxes"][0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"image 1 must be finite, but targets\[1\]\['boxes'\] hold NaN or Inf"):
        HungarianMatcher(class_cost="focal")(outputs, targets)


def test_label_out_of_range_names_the_image() -> None:
    outputs, targets = random_batch([2, 3], queries=5, classes=4, seed=0)
    targets[1]["labels"][2] = 4
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] must lie in \[0, 4\).*got 4"):
        HungarianMatcher()(outputs, targets)
    targets[1]["labels"][2] = -1
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] must lie in \[0, 4\).*got -1"):
        HungarianMatcher()(outputs, targets)


def test_malformed_inputs() -> None:
    outputs, targets = random_batch([2, 3], queries=5, classes=4, seed=0)
    matcher = HungarianMatcher()
    with pytest.raises(ValueError, match=r"outputs must contain 'pred_logits' and .*missing \['pred_boxes'\]"):
        matcher({"pred_logits": outputs["pred_logits"]}, targets)
    with pytest.raises(TypeError, match=r"outputs must be a mapping"):
        matcher([outputs["pred_logits"]], targets)
    with pytest.raises(ValueError, match=r"outputs\['pred_logits'\] must have shape \[B, Q, C\], got \(10, 4\)"):
        matcher({**outputs, "pred_logits": outputs["pred_logits"].flatten(0, 1)}, targets)
    with pytest.raises(ValueError, match=r"outputs\['pred_boxes'\] must .*\[B, Q, 4\] = \[2, 5, 4\].*\(2, 4, 4\)"):
        matcher({**outputs, "pred_boxes": outputs["pred_boxes"][:, :4]}, targets)
    with pytest.raises(TypeError, match=r"outputs\['pred_boxes'\] must be a floating-point tensor, got a torch.int64"):
        matcher({**outputs, "pred_boxes": outputs["pred_boxes"].long()}, targets)
    with pytest.raises(ValueError, match=r"targets must hold one dict per image, B = 2 \(from outputs\), got 1"):
        matcher(outputs, targets[:1])
    with pytest.raises(TypeError, match=r"targets must be a list of B = 2 dicts, got dict"):
        matcher(outputs, targets[0])
    with pytest.raises(ValueError, match=r"targets\[1\] must be a dict with 'labels' and 'boxes'"):
        matcher(outputs, [targets[0], {"labels": targets[1]["labels"]}])
    bad_labels = {"labels": targets[1]["labels"].float(), "boxes": targets[1]["boxes"]}
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] must be an integer .*got a torch.float32 tensor"):
        matcher(outputs, [targets[0], bad_labels])
    bad_labels = {"labels": targets[1]["labels"] > 0, "boxes": targets[1]["boxes"]}
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] must be an integer .*got a torch.bool tensor"):
        matcher(outputs, [targets[0], bad_labels])
    bad_boxes = {"labels": targets[1]["labels"], "boxes": targets[1]["boxes"][:2]}
    with pytest.raises(
        ValueError, match=r"targets\[1\]\['boxes'\] must be .*T = 3.*got a torch.float32 tensor of shape \(2, 4\)"
    ):
        matcher(outputs, [targets[0], bad_boxes])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_cost": "softmax"}, r"class_cost must be one of \('ce', 'focal'\), got 'softmax'"),
        ({"cost_bbox": -1.0}, r"cost_bbox must be a finite number >= 0, got -1.0"),
        ({"cost_giou": float("nan")}, r"cost_giou must be a finite number >= 0, got nan"),
        ({"cost_class": 0, "cost_bbox": 0, "cost_giou": 0}, r"must not all be 0"),
        ({"alpha": 1.5}, r"alpha must lie in \[0, 1\], got 1.5"),
        ({"gamma": -2.0}, r"gamma must be a finite number >= 0, got -2.0"),
    ],
)
def test_bad_hyper_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HungarianMatcher(**kwargs)
