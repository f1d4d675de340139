"""The whole DINO stack learns: dino_r18_tiny, its criterion (varifocal, denoising, encoder
proposals) and the focal Hungarian matcher overfit two synthetic images within a bounded
number of steps; the check uses the detections of the sigmoid postprocess."""

import pytest
import torch

from sightkit.data.synthetic.shapes import SHAPE_CLASSES
from sightkit.models import create_model, dino_postprocess
from sightkit.ops import box_convert, box_iou
from tests.models.test_detr_overfit import synthetic_batch

MAX_STEPS = 150


def detections_match(outputs: dict, targets: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """For every target: the IoU of the best-scoring detection of its class that overlaps it
    most, and whether the top-T detections of the image (T = its number of targets) hold it."""
    sizes = torch.ones(len(targets), 2)
    found = dino_postprocess(outputs["pred_logits"], outputs["pred_boxes"], sizes, top_k=10)
    ious, recalled = [], []
    for detections, target in zip(found, targets, strict=True):
        count = len(target["labels"])
        top_boxes, top_labels = detections["boxes"][:count], detections["labels"][:count]
        overlap = box_iou(box_convert(target["boxes"], "cxcywh", "xyxy"), top_boxes)
        same_class = target["labels"][:, None] == top_labels[None, :]
        best = (overlap * same_class).max(1).values
        ious.append(best)
        recalled.append(best > 0.5)
    return torch.cat(ious), torch.cat(recalled)


@pytest.mark.slow
def test_dino_r18_tiny_overfits_two_images() -> None:
    images, targets = synthetic_batch()
    assert sum(len(t["labels"]) for t in targets) >= 4
    model = create_model("dino_r18_tiny", num_classes=len(SHAPE_CLASSES))
    criterion = model.build_criterion()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    for step in range(1, MAX_STEPS + 1):
        model.train()
        losses = criterion(model(images, targets=targets), targets)
        total = sum(weight * losses[name] for name, weight in criterion.weight_dict.items())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                ious, recalled = detections_match(model(images), targets)
            if ious.min() > 0.7 and recalled.all():
                break
    assert ious.min() > 0.7, f"after {step} steps the best same-class IoUs are {ious.tolist()}"
    assert recalled.all(), f"after {step} steps the top detections recall {recalled.tolist()}"
