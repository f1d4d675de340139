"""The whole VarifocalNet stack learns: vfnet_r18_tiny with ATSS targets, the varifocal and
GIoU losses and the postprocess reaches AP50 >= 0.9 on the two synthetic images it trains on."""

import numpy as np
import pytest
import torch

from sightkit.data.synthetic.shapes import SHAPE_CLASSES, render_shapes
from sightkit.eval import evaluate_coco
from sightkit.models import create_model

SIZE = 96
MAX_STEPS = 150
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def synthetic_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], dict]:
    """Two images of shapes, their targets (labels, absolute xyxy boxes) and the COCO ground truth."""
    rng = np.random.default_rng(3)
    images, targets = [], []
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)],
    }
    for image_id in (1, 2):
        image, shapes = render_shapes(rng, SIZE, SIZE, max_objects=4)
        boxes = []
        for shape in shapes:
            ys, xs = np.nonzero(shape.mask)
            x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            boxes.append([x1, y1, x2, y2])
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": shape.label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        coco["images"].append({"id": image_id, "width": SIZE, "height": SIZE})
        targets.append({"labels": torch.tensor([s.label for s in shapes]), "boxes": torch.tensor(boxes).float()})
        pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        images.append((pixels - MEAN[:, None, None]) / STD[:, None, None])
    return torch.stack(images), targets, coco


@pytest.mark.slow
def test_vfnet_r18_tiny_overfits_two_images() -> None:
    images, targets, coco = synthetic_batch()
    assert sum(len(t["labels"]) for t in targets) >= 4
    model = create_model("vfnet_r18_tiny", num_classes=len(SHAPE_CLASSES))
    criterion = model.build_criterion()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sizes = torch.tensor([[SIZE, SIZE]] * 2)
    for step in range(1, MAX_STEPS + 1):
        model.train()
        losses = criterion(model(images), targets)
        total = sum(weight * losses[name] for name, weight in criterion.weight_dict.items())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                outputs = model(images)
            detections = model.postprocess(outputs["pred_logits"], outputs["pred_boxes"], sizes)
            metrics = evaluate_coco(coco, {i + 1: d for i, d in enumerate(detections)})
            if metrics["AP50"] >= 0.9:
                break
    assert metrics["AP50"] >= 0.9, f"after {step} steps AP50 is {metrics['AP50']:.3f} (losses {losses})"
