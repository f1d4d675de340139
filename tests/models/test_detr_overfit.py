"""The whole DETR stack learns: detr_r18_tiny, the set criterion and the Hungarian matcher
overfit two synthetic images within a bounded number of steps."""

import numpy as np
import pytest
import torch

from sightkit.data.synthetic.shapes import SHAPE_CLASSES, render_shapes
from sightkit.losses import SetCriterion
from sightkit.models import create_model
from sightkit.ops import HungarianMatcher, box_convert, generalized_box_iou

SIZE = 96
MAX_STEPS = 150
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def synthetic_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two images of shapes; targets in DETR's format (labels, cxcywh boxes relative to the image)."""
    rng = np.random.default_rng(3)
    images, targets = [], []
    for _ in range(2):
        image, shapes = render_shapes(rng, SIZE, SIZE, max_objects=4)
        boxes = []
        for shape in shapes:
            ys, xs = np.nonzero(shape.mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        xyxy = torch.tensor(boxes, dtype=torch.float32) / SIZE
        targets.append(
            {"labels": torch.tensor([s.label for s in shapes]), "boxes": box_convert(xyxy, "xyxy", "cxcywh")}
        )
        pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        images.append((pixels - MEAN[:, None, None]) / STD[:, None, None])
    return torch.stack(images), targets


def matched_quality(outputs: dict, targets: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """GIoU and label correctness of each target's matched query."""
    giou, correct = [], []
    for b, (pred, tgt) in enumerate(HungarianMatcher()(outputs, targets)):
        pred_boxes = box_convert(outputs["pred_boxes"][b, pred], "cxcywh", "xyxy")
        giou.append(generalized_box_iou(pred_boxes, box_convert(targets[b]["boxes"][tgt], "cxcywh", "xyxy")).diagonal())
        correct.append(outputs["pred_logits"][b, pred].argmax(-1) == targets[b]["labels"][tgt])
    return torch.cat(giou), torch.cat(correct)


@pytest.mark.slow
def test_detr_r18_tiny_overfits_two_images() -> None:
    images, targets = synthetic_batch()
    assert sum(len(t["labels"]) for t in targets) >= 4
    # Dropout off: the point is to memorise, and the check runs in eval mode.
    model = create_model("detr_r18_tiny", num_classes=len(SHAPE_CLASSES), dropout=0.0)
    criterion = SetCriterion(len(SHAPE_CLASSES), aux_layers=len(model.transformer.decoder_layers) - 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    for step in range(1, MAX_STEPS + 1):
        model.train()
        losses = criterion(model(images), targets)
        total = sum(weight * losses[name] for name, weight in criterion.weight_dict.items())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                giou, correct = matched_quality(model(images), targets)
            if giou.min() > 0.8 and correct.all():
                break
    assert giou.min() > 0.8, f"after {step} steps the matched GIoUs are {giou.tolist()}"
    assert correct.all(), f"after {step} steps the matched labels are right for {correct.tolist()}"
