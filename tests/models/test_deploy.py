"""DeployDetector (postprocess inside the graph) and multiclass_nms (ONNX NonMaxSuppression)."""

import pytest
import torch
import torchvision

from sightkit.models import create_model
from sightkit.models.deploy import DeployDetector
from sightkit.models.detr_postprocess import detr_postprocess
from sightkit.models.dino_postprocess import dino_postprocess
from sightkit.models.vfnet import vfnet_postprocess
from sightkit.ops.multiclass_nms import ONNX_TRANSLATIONS, multiclass_nms


def _random_boxes(generator: torch.Generator, batch: int, count: int, side: float = 50.0) -> torch.Tensor:
    corner = torch.rand(batch, count, 2, generator=generator) * side
    size = torch.rand(batch, count, 2, generator=generator) * side / 2 + 1
    return torch.cat((corner, corner + size), dim=-1)


def _reference_nms(boxes, scores, iou_threshold, score_threshold):
    """The definition written out: torchvision's NMS for every image and class on the boxes above the threshold."""
    rows = []
    for image in range(scores.shape[0]):
        for label in range(scores.shape[1]):
            for index in torch.nonzero(scores[image, label] > score_threshold).squeeze(1).tolist():
                rows.append((image, label, index, float(scores[image, label, index])))
    kept = []
    for image in range(scores.shape[0]):
        for label in range(scores.shape[1]):
            group = [r for r in rows if r[0] == image and r[1] == label]
            if not group:
                continue
            index = torch.tensor([r[2] for r in group])
            order = torchvision.ops.nms(boxes[image, index], scores[image, label, index], iou_threshold)
            kept.extend((image, label, int(index[i])) for i in order)
    return torch.tensor(kept, dtype=torch.int64).reshape(-1, 3)


def test_multiclass_nms_equals_torchvision_per_image_and_class() -> None:
    generator = torch.Generator().manual_seed(0)
    boxes = _random_boxes(generator, 3, 40)
    scores = torch.rand(3, 4, 40, generator=generator)
    got = multiclass_nms(boxes, scores, 0.3, 0.2)
    assert torch.equal(got, _reference_nms(boxes, scores, 0.3, 0.2))
    assert got.shape[0] < 3 * 4 * 40  # something was suppressed or thresholded


def test_multiclass_nms_hand_case_and_empty() -> None:
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]]])
    scores = torch.tensor([[[0.9, 0.8, 0.7], [0.1, 0.95, 0.0]]])
    # class 0: box 1 overlaps box 0 (IoU 81/119 = 0.68 > 0.5) and goes; class 1: box 0 at 0.1 is below 0.2.
    assert multiclass_nms(boxes, scores, 0.5, 0.2).tolist() == [[0, 0, 0], [0, 0, 2], [0, 1, 1]]
    assert multiclass_nms(boxes, torch.zeros(1, 2, 3), 0.5, 0.2).shape == (0, 3)
    with pytest.raises(ValueError, match="scores must have shape"):
        multiclass_nms(boxes, torch.zeros(1, 3), 0.5)


@pytest.mark.slow
def test_multiclass_nms_exports_to_onnx_non_max_suppression(tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")

    class Wrapper(torch.nn.Module):
        def forward(self, boxes, scores):
            return multiclass_nms(boxes, scores, 0.4, 0.1)

    generator = torch.Generator().manual_seed(1)
    boxes, scores = _random_boxes(generator, 2, 30), torch.rand(2, 3, 30, generator=generator)
    path = tmp_path / "nms.onnx"
    batch, count = torch.export.Dim("batch"), torch.export.Dim("count")
    torch.onnx.export(
        Wrapper(),
        (boxes, scores),
        str(path),
        dynamo=True,
        input_names=["boxes", "scores"],
        dynamic_shapes={"boxes": {0: batch, 1: count}, "scores": {0: batch, 2: count}},
        custom_translation_table=ONNX_TRANSLATIONS,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "NonMaxSuppression" in {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    for batch_size, boxes_count in ((2, 30), (4, 50)):
        boxes, scores = _random_boxes(generator, batch_size, boxes_count), torch.rand(batch_size, 3, boxes_count)
        (got,) = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})
        assert torch.equal(torch.from_numpy(got), _reference_nms(boxes, scores, 0.4, 0.1))


@pytest.mark.parametrize(
    ("name", "kind", "postprocess"),
    [("detr_r18_tiny", "softmax", detr_postprocess), ("dino_r18_tiny", "sigmoid", dino_postprocess)],
)
def test_top_k_kinds_equal_the_family_postprocess(name, kind, postprocess) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        boxes, scores, labels = DeployDetector(model, kind, top_k=10)(images)
        outputs = model(images)
    expected = postprocess(outputs["pred_logits"], outputs["pred_boxes"], torch.tensor([[96, 128]] * 2), top_k=10)
    for image in range(2):
        reference = expected[image]
        torch.testing.assert_close(scores[image], reference["scores"])
        assert torch.equal(labels[image], reference["labels"])
        clipped = reference["boxes"].clamp(min=0).minimum(torch.tensor([128.0, 96, 128, 96]))
        torch.testing.assert_close(boxes[image], clipped)


def test_nms_kind_equals_vfnet_postprocess_and_pads_missing_slots() -> None:
    torch.manual_seed(0)
    model = create_model("vfnet_r18_tiny", num_classes=3).eval()
    images = torch.randn(2, 3, 96, 128)
    # A threshold that random weights pass only sometimes: fewer survivors than top_k in some image.
    with torch.no_grad():
        outputs = model(images)
        threshold = float(outputs["pred_logits"].sigmoid().flatten(1).quantile(0.995))
        boxes, scores, labels = DeployDetector(model, "nms", top_k=40, score_threshold=threshold)(images)
    expected = vfnet_postprocess(
        outputs["pred_logits"], outputs["pred_boxes"], torch.tensor([[96, 128]] * 2), 40, score_threshold=threshold
    )
    padded = 0
    for image in range(2):
        reference, count = expected[image], len(expected[image]["scores"])
        assert count > 0
        torch.testing.assert_close(scores[image, :count], reference["scores"])
        assert torch.equal(labels[image, :count], reference["labels"])
        torch.testing.assert_close(boxes[image, :count], reference["boxes"])
        assert (scores[image, count:] == 0).all() and (labels[image, count:] == -1).all()
        padded += 40 - count
    assert padded > 0


def test_deploy_detector_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        DeployDetector(torch.nn.Identity(), "argmax")
