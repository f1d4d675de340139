"""The dense face detector: centre-sampling assignment and postprocessing by hand, decoding,
the losses' fixed points, and an overfit run on synthetic face scenes."""

import json
from pathlib import Path

import pytest
import torch

from sightkit.data.coco import read_image
from sightkit.data.synthetic.faces import synthesize_faces
from sightkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sightkit.losses import FaceDetectionCriterion, assign_centre_positions
from sightkit.models import create_model, face_detector_postprocess
from sightkit.ops import box_iou


def test_assignment_by_hand() -> None:
    # Stride 8, radius 1.5: within 12 px of the centre on both axes and inside the box.
    points = torch.tensor([[20.0, 20.0], [31.0, 20.0], [4.0, 4.0], [22.0, 22.0], [100.0, 100.0]])
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [16.0, 16.0, 28.0, 28.0]])  # the second inside the first
    # (20, 20): both qualify, the smaller (1) wins; (31, 20): 11 px from box 0's centre, outside box 1;
    # (4, 4): inside box 0 but 16 px from its centre; (22, 22): box 1; (100, 100): nothing.
    assert assign_centre_positions(points, boxes, stride=8).tolist() == [1, 0, -1, 1, -1]
    assert assign_centre_positions(points, boxes[:0], stride=8).tolist() == [-1] * 5


def test_decoding_is_relative_to_each_cell() -> None:
    model = create_model("face_detector_tiny").eval()
    with torch.no_grad():
        for head in (model.box_head, model.landmark_head):
            head.weight.zero_()
        model.box_head.bias.fill_(0.0)
        model.landmark_head.bias.copy_(torch.tensor([1.0, 0.0] * 5))
        outputs = model(torch.zeros(1, 3, 32, 48))
    points = outputs["points"]
    assert points.shape == (4 * 6, 2) and points[:2].tolist() == [[4.0, 4.0], [12.0, 4.0]]
    half = 8 * torch.log(torch.tensor(2.0))  # softplus(0) strides
    torch.testing.assert_close(outputs["boxes"][0, 1], torch.tensor([12 - half, 4 - half, 12 + half, 4 + half]))
    torch.testing.assert_close(outputs["landmarks"][0, 1], torch.tensor([[20.0, 4.0]] * 5))


def test_losses_vanish_where_the_predictions_are_the_targets() -> None:
    criterion = FaceDetectionCriterion(stride=8)
    points = torch.tensor([[20.0, 20.0], [60.0, 60.0]])
    box = torch.tensor([[8.0, 8.0, 32.0, 36.0]])
    marks = torch.rand(1, 5, 2) * 20 + 10
    outputs = {
        "points": points,
        "logits": torch.tensor([[30.0, -30.0]], requires_grad=True),
        "boxes": torch.cat([box, box + 50])[None].requires_grad_(),
        "landmarks": torch.cat([marks, marks])[None].requires_grad_(),
    }
    losses = criterion(outputs, [{"boxes": box, "landmarks": marks}])
    assert losses["loss_cls"] < 1e-10 and losses["loss_box"].abs() < 1e-6 and losses["loss_landmarks"] == 0
    # An image without faces: every position is background, the box terms are zeros with a graph.
    losses = criterion(outputs, [{"boxes": box[:0], "landmarks": marks[:0]}])
    sum(losses.values()).backward()
    assert losses["loss_box"] == 0 and outputs["logits"].grad[0, 0] > 0


def test_postprocess_by_hand() -> None:
    outputs = {
        "logits": torch.tensor([[3.0, 2.0, -3.0]]),  # scores 0.95, 0.88, 0.05
        "boxes": torch.tensor([[[0.0, 0, 10, 10], [1.0, 1, 11, 11], [50.0, 50, 60, 60]]]),
        "landmarks": torch.arange(30.0).reshape(1, 3, 5, 2),
    }
    (found,) = face_detector_postprocess(outputs, 0.5, 0.4, scale=torch.tensor([[2.0, 3.0]]))
    # The second box overlaps the first (IoU 0.68) and goes; the third scores too low.
    torch.testing.assert_close(found["boxes"], torch.tensor([[0.0, 0, 20, 30]]))
    torch.testing.assert_close(found["landmarks"][0, 0], torch.tensor([0.0, 3.0]))


def test_postprocess_takes_bfloat16_outputs() -> None:
    # under precision=bf16 the boxes arrive in bfloat16 (NMS refused them beside float32 scores);
    # these values are exact in bfloat16, so the answer is the float32 one
    outputs = {
        "logits": torch.tensor([[3.0, 2.0, -3.0]]),
        "boxes": torch.tensor([[[0.0, 0, 10, 10], [1.0, 1, 11, 11], [50.0, 50, 60, 60]]]),
        "landmarks": torch.arange(30.0).reshape(1, 3, 5, 2),
    }
    (expected,) = face_detector_postprocess(outputs, 0.5, 0.4)
    (found,) = face_detector_postprocess({k: v.bfloat16() for k, v in outputs.items()}, 0.5, 0.4)
    for key in ("boxes", "scores", "landmarks"):
        assert found[key].dtype == torch.float32
        torch.testing.assert_close(found[key], expected[key], rtol=0, atol=0)


def test_postprocess_clips_boxes_to_the_image_but_not_landmarks() -> None:
    outputs = {
        "logits": torch.tensor([[3.0, 2.0]]),
        "boxes": torch.tensor([[[-4.0, 2, 8, 9], [30.0, 40, 70, 55]]]),  # apart: both kept
        "landmarks": torch.full((1, 2, 5, 2), -1.0),
    }
    (found,) = face_detector_postprocess(outputs, 0.5, 0.4, scale=torch.tensor([[2.0, 1.0]]), image_sizes=[(50, 100)])
    # scaled x by 2: [-8, 2, 16, 9] and [60, 40, 140, 55]; clipped to width 100 and height 50
    torch.testing.assert_close(found["boxes"], torch.tensor([[0.0, 2, 16, 9], [60, 40, 100, 50]]))
    torch.testing.assert_close(found["landmarks"], torch.full((2, 5, 2), -1.0) * torch.tensor([2.0, 1.0]))


@pytest.mark.slow
def test_overfits_synthetic_face_scenes(tmp_path: Path) -> None:
    # 6 scenes of 96 px or less with 12 faces of 9 to 30 px: 60 AdamW steps find every face
    # (IoU > 0.5) with landmarks within a tenth of the face size, and little else.
    synthesize_faces(out=str(tmp_path), images=8, size=96, max_faces=3, identities=5, test_identities=20,
                     per_identity=2, pairs_per_fold=1, progress=False, val_fraction=0.2)  # fmt: skip
    annotations = json.loads((tmp_path / "annotations" / "train.json").read_text())
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    images, targets = torch.zeros(len(annotations["images"]), 3, 96, 96), []
    for k, record in enumerate(annotations["images"]):
        pixels = read_image(tmp_path / "images" / record["file_name"]).float() / 255
        images[k, :, : pixels.shape[1], : pixels.shape[2]] = (pixels - mean) / std
        faces = [a for a in annotations["annotations"] if a["image_id"] == record["id"]]
        boxes = torch.tensor([a["bbox"] for a in faces])
        boxes[:, 2:] += boxes[:, :2]
        marks = torch.tensor([a["keypoints"] for a in faces]).reshape(-1, 5, 3)[..., :2]
        targets.append({"boxes": boxes, "landmarks": marks})
    model = create_model("face_detector_tiny")
    criterion = FaceDetectionCriterion(model.stride)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(60):
        losses = criterion(model(images), targets)
        optimizer.zero_grad()
        sum(criterion.weight_dict[k] * v for k, v in losses.items()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        found = face_detector_postprocess(model(images), score_threshold=0.3)
    total = sum(len(t["boxes"]) for t in targets)
    hits, errors = 0, []
    for detections, target in zip(found, targets, strict=True):
        assert detections["boxes"].shape[0] > 0
        best, index = box_iou(target["boxes"], detections["boxes"]).max(1)
        hits += int((best > 0.5).sum())
        size = (target["boxes"][:, 2:] - target["boxes"][:, :2])[:, None]
        error = ((detections["landmarks"][index] - target["landmarks"]) / size).norm(dim=-1).mean(1)
        errors += error[best > 0.5].tolist()
    assert hits >= 0.9 * total and sum(errors) / len(errors) < 0.1
    assert sum(len(d["boxes"]) for d in found) <= total + 2
