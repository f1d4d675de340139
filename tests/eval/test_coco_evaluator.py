"""CocoEvaluator: hand-derived AP/AR values, agreement with pycocotools, edge cases and input errors."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO as RefCOCO
from pycocotools.cocoeval import COCOeval as RefCOCOeval

from sightkit.eval import CocoEvaluator, evaluate_coco
from sightkit.eval.coco import METRIC_NAMES


def gt_dataset(boxes_per_image: dict[int, list[tuple[int, list[float]]]], size: int = 200, categories=(1,)) -> dict:
    """A COCO dict; boxes_per_image maps image id -> [(category_id, [x, y, w, h]), ...]."""
    images = [{"id": i, "file_name": f"{i}.png", "width": size, "height": size} for i in boxes_per_image]
    annotations = []
    for image_id, boxes in boxes_per_image.items():
        for category_id, (x, y, w, h) in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c, "name": f"class{c}"} for c in categories]
    return {"images": images, "annotations": annotations, "categories": cats}


def prediction(xyxy: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def gt_as_predictions(coco: dict, label_of: dict[int, int]) -> dict[int, dict[str, torch.Tensor]]:
    out = {}
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        out[image["id"]] = prediction(xyxy, [1.0] * len(anns), [label_of[a["category_id"]] for a in anns])
    return out


def test_ground_truth_as_predictions_gives_one() -> None:
    # Small (< 32^2), medium and large boxes in two categories, so that all 12 numbers are defined.
    sizes = {"s": [10, 10, 20, 12], "m": [40, 40, 50, 60], "l": [60, 20, 130, 110]}
    coco = gt_dataset(
        {1: [(4, sizes["s"]), (9, sizes["m"])], 2: [(9, sizes["l"]), (4, sizes["m"]), (4, [150, 150, 30, 30])]},
        categories=(4, 9),
    )
    metrics = evaluate_coco(coco, gt_as_predictions(coco, {4: 0, 9: 1}))
    assert list(metrics) == list(METRIC_NAMES["bbox"])
    # AR1 allows one detection per image and category: category 4 has two boxes in image 2, so it recalls
    # 2 of its 3 boxes; category 9 recalls both.
    assert metrics == {**dict.fromkeys(METRIC_NAMES["bbox"], 1.0), "AR1": pytest.approx((2 / 3 + 1) / 2, abs=1e-12)}


def test_hand_derived_ap_two_boxes_known_ious() -> None:
    # GT A = [0,0,10,10], B = [20,0,30,10] (xyxy). Detection a: IoU(a, A) = 82/100 = 0.82, score 0.8;
    # detection b: IoU(b, B) = 63/100 = 0.63, score 0.9 (ranked first).
    # IoU thresholds .50 .55 .60: both match -> precision 1 at every recall -> AP 1.
    #   .65 .70 .75 .80: b is a false positive ranked before the true positive a -> precision 1/2 up to
    #   recall 1/2 -> interpolated precision 0.5 at the 51 recall thresholds 0.00..0.50 of 101 -> AP 25.5/101.
    #   .85 .90 .95: nothing matches -> AP 0.
    coco = gt_dataset({1: [(1, [0, 0, 10, 10]), (1, [20, 0, 10, 10])]})
    metrics = evaluate_coco(coco, {1: prediction([[0, 0, 10, 8.2], [20, 0, 30, 6.3]], [0.8, 0.9], [0, 0])})
    ap_mid = 25.5 / 101
    expected_ap = (3 * 1.0 + 4 * ap_mid + 3 * 0.0) / 10
    # Recall at max 100 detections: 1 at 3 thresholds, 1/2 at 4, 0 at 3; with 1 detection (b) 1/2 at 3 thresholds.
    expected = {
        "AP": expected_ap,
        "AP50": 1.0,
        "AP75": ap_mid,
        "APs": expected_ap,  # both boxes have area 100 < 32^2
        "APm": -1.0,
        "APl": -1.0,
        "AR1": 0.15,
        "AR10": 0.5,
        "AR100": 0.5,
        "ARs": 0.5,
        "ARm": -1.0,
        "ARl": -1.0,
    }
    assert metrics == pytest.approx(expected, abs=1e-12)


def test_known_shift_gives_hand_derived_ap() -> None:
    # Every 20x20 box shifted right by 4 px: IoU = 16*20 / (24*20) = 2/3, a match at thresholds .50-.65 only.
    boxes = {i: [(1, [10.0 * i, 30, 20, 20]), (1, [100, 10.0 * i, 20, 20])] for i in range(1, 6)}
    coco = gt_dataset(boxes)
    shifted = {
        i: prediction([[x + 4, y, x + 4 + w, y + h] for _, (x, y, w, h) in anns], [0.9, 0.7], [0, 0])
        for i, anns in boxes.items()
    }
    metrics = evaluate_coco(coco, shifted)
    assert metrics["AP"] == pytest.approx(0.4, abs=1e-12)
    assert (metrics["AP50"], metrics["AP75"]) == (1.0, 0.0)
    assert metrics["AR100"] == pytest.approx(0.4, abs=1e-12)


def reference_stats(coco: dict, records: list[dict], iou_type: str, sigmas=None) -> np.ndarray:
    """pycocotools' summary numbers for the same ground truth and result records."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = RefCOCO()
        gt.dataset = {k: [dict(v) for v in vs] for k, vs in coco.items()}
        gt.createIndex()
        dt = gt.loadRes([dict(r) for r in records])
        ev = RefCOCOeval(gt, dt, iou_type)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def random_detection_case(seed: int) -> tuple[dict, dict[int, dict[str, torch.Tensor]], list[dict]]:
    """Random GT of 3 categories in all size ranges with crowd regions, and jittered, missed and false
    detections; returns (GT dict, sightkit predictions, the same predictions as COCO records)."""
    rng = np.random.default_rng(seed)
    categories = (2, 5, 7)
    images, annotations, predictions, records = [], [], {}, []
    for image_id in range(1, 13):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 320, "height": 240})
        xyxy, scores, labels = [], [], []
        for _ in range(rng.integers(0, 7)):
            label = int(rng.integers(0, 3))
            w, h = (float(v) for v in rng.choice([8, 20, 45, 70, 130], size=2) * rng.uniform(0.8, 1.2, size=2))
            x, y = float(rng.uniform(0, 320 - w)), float(rng.uniform(0, 240 - h))
            crowd = int(rng.random() < 0.1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[label],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": crowd,
                }
            )
            if rng.random() < 0.8:
                dx, dy = rng.normal(0, 0.15, size=2) * (w, h)
                dw, dh = rng.uniform(0.75, 1.25, size=2) * (w, h)
                xyxy.append([x + dx, y + dy, x + dx + dw, y + dy + dh])
                scores.append(float(rng.random()))
                labels.append(label if rng.random() < 0.9 else int(rng.integers(0, 3)))
        for _ in range(rng.integers(0, 4) if image_id != 3 else 0):  # false positives; image 3 gets none at all
            x, y, w, h = rng.uniform(0, 200), rng.uniform(0, 150), rng.uniform(5, 100), rng.uniform(5, 80)
            xyxy.append([x, y, x + w, y + h])
            scores.append(float(rng.random()))
            labels.append(int(rng.integers(0, 3)))
        if image_id == 3:
            xyxy, scores, labels = [], [], []
        predictions[image_id] = prediction(xyxy, scores, labels)
        boxes32 = predictions[image_id]["boxes"].double().tolist()
        for (x1, y1, x2, y2), score, label in zip(boxes32, scores, labels, strict=True):
            score32 = float(torch.tensor(score, dtype=torch.float32))
            records.append(
                {
                    "image_id": image_id,
                    "category_id": categories[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score32,
                }
            )
    coco = {"images": images, "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in categories]}
    return coco, predictions, records


@pytest.mark.parametrize("seed", [0, 1])
def test_bbox_metrics_equal_pycocotools(seed: int) -> None:
    coco, predictions, records = random_detection_case(seed)
    metrics = evaluate_coco(coco, predictions)
    reference = reference_stats(coco, records, "bbox")
    assert list(metrics.values()) == pytest.approx(reference.tolist(), abs=1e-12)
    assert 0.05 < metrics["AP"] < 0.95  # a case that exercises partial matches, not a trivial one


def test_images_without_detections_count_as_missed() -> None:
    coco = gt_dataset({1: [(1, [10, 10, 50, 50])], 2: [(1, [60, 60, 50, 50])], 3: [(1, [0, 0, 40, 40])]})
    evaluator = CocoEvaluator(coco)
    evaluator.update({1: prediction([[10, 10, 60, 60]], [0.5], [0])})
    evaluator.update({2: prediction([], [], [])})
    # One of two GT found at precision 1: interpolated precision 1 at recall 0..0.5 = 51 of 101 thresholds.
    # Image 3 was never passed to update(), so it is not evaluated.
    assert evaluator.image_ids == [1, 2]
    assert evaluator.compute()["AP"] == pytest.approx(51 / 101, abs=1e-12)

    evaluator.reset()
    evaluator.update({i: prediction([], [], []) for i in (1, 2, 3)})
    metrics = evaluator.compute()
    assert (metrics["AP"], metrics["AP50"], metrics["AR100"]) == (0.0, 0.0, 0.0)


def test_label_mapping_round_trip_and_custom_order() -> None:
    coco = gt_dataset(
        {1: [(3, [0, 0, 20, 20]), (7, [30, 30, 40, 40]), (11, [100, 100, 60, 60])]}, categories=(11, 3, 7)
    )
    evaluator = CocoEvaluator(coco)
    assert evaluator.label_to_category == {0: 3, 1: 7, 2: 11}
    assert evaluator.category_to_label == {3: 0, 7: 1, 11: 2}
    for label, category in evaluator.label_to_category.items():
        assert evaluator.category_to_label[category] == label

    custom = {0: 11, 1: 3, 2: 7}  # e.g. a model trained with the JSON's category order
    assert evaluate_coco(coco, gt_as_predictions(coco, {11: 0, 3: 1, 7: 2}), label_to_category=[11, 3, 7])["AP"] == 1.0
    assert CocoEvaluator(coco, label_to_category=custom).label_to_category == custom
    # The same predictions read with the default mapping land on the wrong categories.
    assert evaluate_coco(coco, gt_as_predictions(coco, {11: 0, 3: 1, 7: 2}))["AP"] == 0.0


def test_per_class_ap_and_table() -> None:
    coco = gt_dataset(
        {1: [(1, [0, 0, 30, 30]), (2, [50, 50, 30, 30])], 2: [(2, [0, 0, 30, 30])]},
        categories=(1, 2, 3),
    )
    evaluator = CocoEvaluator(coco)
    evaluator.update({1: prediction([[0, 0, 30, 30], [50, 50, 80, 80]], [0.9, 0.8], [0, 1]), 2: prediction([], [], [])})
    metrics = evaluator.compute()
    rows = evaluator.per_class_ap()
    assert [(r["category_id"], r["label"], r["name"], r["gt"]) for r in rows] == [
        (1, 0, "class1", 1),
        (2, 1, "class2", 2),
        (3, 2, "class3", 0),
    ]
    assert [r["AP"] for r in rows] == pytest.approx([1.0, 51 / 101, -1.0], abs=1e-12)
    assert [r["AP50"] for r in rows] == pytest.approx([1.0, 51 / 101, -1.0], abs=1e-12)
    # COCO's AP is the mean over categories that have ground truth.
    assert metrics["AP"] == pytest.approx((1.0 + 51 / 101) / 2, abs=1e-12)
    table = evaluator.per_class_table()
    assert [str(cell) for cell in table.columns[0].cells] == ["class1", "class2", "class3"]
    assert list(table.columns[4].cells) == ["1.000", f"{51 / 101:.3f}", "-"]


def keypoint_gt(num_keypoints: int, area: float = 10000.0) -> dict:
    keypoints = []
    for k in range(num_keypoints):
        keypoints += [20.0 + 7 * k, 40.0 + 3 * k, 2]
    ann = {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "bbox": [10, 10, 100, 100],
        "area": area,
        "iscrowd": 0,
        "keypoints": keypoints,
        "num_keypoints": num_keypoints,
    }
    return {
        "images": [{"id": 1, "file_name": "1.png", "width": 300, "height": 300}],
        "annotations": [ann],
        "categories": [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(num_keypoints)]}],
    }


def keypoint_prediction(coco: dict, dx: float, score: float = 1.0) -> dict[str, torch.Tensor]:
    kp = torch.tensor(coco["annotations"][0]["keypoints"], dtype=torch.float64).reshape(1, -1, 3)
    kp[..., 0] += dx
    return {"keypoints": kp, "scores": torch.tensor([score]), "labels": torch.tensor([0])}


def test_keypoints_hand_derived_oks() -> None:
    # 5 keypoints with sigma 0.1 each, area 10000, every keypoint shifted by d = 16.2 px:
    # OKS = mean exp(-d^2 / (2 * area * (2 sigma)^2)) = exp(-262.44 / 800) = 0.7203, a match at .50-.70 only.
    coco = keypoint_gt(5)
    oks = math.exp(-(16.2**2) / (2 * 10000 * 0.2**2))
    assert 0.70 < oks < 0.75
    metrics = evaluate_coco(coco, {1: keypoint_prediction(coco, 16.2)}, "keypoints", kpt_oks_sigmas=[0.1] * 5)
    assert list(metrics) == list(METRIC_NAMES["keypoints"])
    expected = {"AP": 0.5, "AP50": 1.0, "AP75": 0.0, "APm": -1.0, "APl": 0.5}  # area 10000 > 96^2: large
    expected |= {"AR": 0.5, "AR50": 1.0, "AR75": 0.0, "ARm": -1.0, "ARl": 0.5}
    assert metrics == pytest.approx(expected, abs=1e-12)

    exact = evaluate_coco(coco, {1: keypoint_prediction(coco, 0.0)}, "keypoints", kpt_oks_sigmas=[0.1] * 5)
    assert (exact["AP"], exact["AR"]) == (1.0, 1.0)


def test_keypoints_equal_pycocotools_with_coco_sigmas() -> None:
    rng = np.random.default_rng(3)
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "person", "keypoints": list("abcdefghijklmnopq")}],
    }
    predictions, records = {}, []
    for image_id in range(1, 7):
        coco["images"].append({"id": image_id, "file_name": f"{image_id}.png", "width": 400, "height": 400})
        people = []
        for _ in range(rng.integers(1, 4)):
            size = float(rng.uniform(40, 160))
            x0, y0 = rng.uniform(0, 400 - size, size=2)
            kps = np.stack([x0 + rng.uniform(0, size, 17), y0 + rng.uniform(0, size, 17), rng.integers(0, 3, 17)], 1)
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [float(x0), float(y0), size, size],
                    "area": size * size * 0.6,
                    "iscrowd": 0,
                    "keypoints": kps.flatten().tolist(),
                    "num_keypoints": int((kps[:, 2] > 0).sum()),
                }
            )
            people.append(kps[:, :2] + rng.normal(0, size * 0.04, (17, 2)))
        kp = torch.tensor(np.stack(people), dtype=torch.float32)
        kp = torch.cat([kp, torch.ones(len(people), 17, 1)], dim=-1)
        scores = torch.tensor(rng.random(len(people)), dtype=torch.float32)
        predictions[image_id] = {
            "keypoints": kp,
            "scores": scores,
            "labels": torch.zeros(len(people), dtype=torch.int64),
        }
        for person_kp, score in zip(kp.double().tolist(), scores.double().tolist(), strict=True):
            flat = [v for point in person_kp for v in point]
            records.append({"image_id": image_id, "category_id": 1, "keypoints": flat, "score": score})
    metrics = evaluate_coco(coco, predictions, "keypoints")
    reference = reference_stats(coco, records, "keypoints")
    assert list(metrics.values()) == pytest.approx(reference[:10].tolist(), abs=1e-12)
    assert 0.05 < metrics["AP"] < 0.95


def test_input_errors() -> None:
    coco = gt_dataset({1: [(1, [0, 0, 10, 10])], 2: []})
    evaluator = CocoEvaluator(coco)
    good = prediction([[0, 0, 10, 10]], [1.0], [0])
    with pytest.raises(ValueError, match="image_id 9 is not in the ground truth"):
        evaluator.update({9: good})
    evaluator.update({1: good})
    with pytest.raises(ValueError, match="image_id 1 was already added"):
        evaluator.update({1: good})
    with pytest.raises(ValueError, match=r"predictions\[2\] must be a dict with tensors .*'scores' is NoneType"):
        evaluator.update({2: {"boxes": good["boxes"], "labels": good["labels"]}})
    with pytest.raises(ValueError, match=r"expected boxes \[N, 4\], scores \[N\], labels \[N\]; got boxes \[1, 5\]"):
        evaluator.update({2: {**good, "boxes": torch.zeros(1, 5)}})
    with pytest.raises(ValueError, match=r"got boxes \[1, 4\], scores \[2\]"):
        evaluator.update({2: {**good, "scores": torch.ones(2)}})
    with pytest.raises(ValueError, match="'scores' has non-finite values"):
        evaluator.update({2: {**good, "scores": torch.tensor([float("nan")])}})
    with pytest.raises(ValueError, match="'labels' must be an integer tensor"):
        evaluator.update({2: {**good, "labels": torch.zeros(1)}})
    with pytest.raises(ValueError, match=r"labels \[5\] have no category; label_to_category knows labels \[0\]"):
        evaluator.update({2: {**good, "labels": torch.tensor([5])}})
    assert evaluator.image_ids == [1]  # nothing of the failed updates was kept

    with pytest.raises(ValueError, match="iou_type must be one of"):
        CocoEvaluator(coco, iou_type="segm")
    with pytest.raises(ValueError, match=r"category ids \[4\] are not in the ground truth's \[1\]"):
        CocoEvaluator(coco, label_to_category=[4])
    with pytest.raises(ValueError, match="each label to a different category"):
        CocoEvaluator(gt_dataset({1: []}, categories=(1, 2)), label_to_category={0: 1, 1: 1})
    with pytest.raises(TypeError, match="ground_truth must be a COCO JSON path"):
        CocoEvaluator([1, 2])  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="ground_truth: COCO JSON file not found"):
        CocoEvaluator("no/such.json")
    with pytest.raises(RuntimeError, match="call compute"):
        CocoEvaluator(coco).per_class_ap()
    with pytest.raises(RuntimeError, match="call update"):
        CocoEvaluator(coco).compute()

    kp = CocoEvaluator(keypoint_gt(5), "keypoints", kpt_oks_sigmas=[0.1] * 5)
    with pytest.raises(
        ValueError,
        match=r"keypoints \[N, 5, 3\]; got scores \[1\], labels \[1\], keypoints \[1, 17, 3\] \(K is the number",
    ):
        kp.update(
            {
                1: {
                    "keypoints": torch.zeros(1, 17, 3),
                    "scores": torch.ones(1),
                    "labels": torch.zeros(1, dtype=torch.long),
                }
            }
        )


def test_ground_truth_dict_is_not_modified(tmp_path) -> None:
    coco = gt_dataset({1: [(1, [0, 0, 10, 10])]})
    before = repr(coco)
    evaluate_coco(coco, {1: prediction([[0, 0, 10, 10]], [1.0], [0])})
    assert repr(coco) == before

    import json

    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    assert evaluate_coco(path, {1: prediction([[0, 0, 10, 10]], [1.0], [0])})["AP"] == 1.0
