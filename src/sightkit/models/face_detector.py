"""A dense face detector with a landmark branch (RetinaFace's three heads, FCOS's anchor-free
assignment, one feature level).

RetinaFace (Deng et al., "RetinaFace: Single-stage Dense Face Localisation in the Wild", CVPR
2020) predicts, at every position of its feature maps, a face score, a box and the 5 facial
landmarks. This detector keeps those three heads but on a single stride-8 map and without
anchors, as FCOS does (Tian et al., ICCV 2019): a position predicts its distances to the
four sides of the face box and the offsets of the 5 landmarks from itself. Faces of 16 to
about 200 pixels are in its range, which is what the synthetic face scenes hold; an FPN
would extend it.

Backbone: a torchvision ResNet up to ``layer2`` with trainable BatchNorm (random weights:
there is no pretrained backbone to freeze here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from sightkit._api import export
from sightkit.models.backbones import ResNetBackbone
from sightkit.models.registry import register_model


@export("models.FaceDetector")
class FaceDetector(nn.Module):
    """Faces and 5 landmarks from ``[B, 3, H, W]`` normalised RGB images.

    Args:
        backbone: ``resnet18`` | ``resnet34`` | ``resnet50``.
        last_stage: the ResNet stage whose map the heads read (2: stride 8).
        width: channels of the head towers.
        num_convs: 3 x 3 convolutions (GroupNorm, ReLU) per tower.

    ``forward`` returns ``{"logits": [B, P], "boxes": [B, P, 4], "landmarks": [B, P, 5, 2],
    "points": [P, 2]}``: per position ``P`` (row-major over the feature map) its face logit,
    its box ``xyxy`` and landmarks in input pixels, and the position's own pixel coordinates.
    """

    def __init__(self, backbone: str = "resnet18", last_stage: int = 2, width: int = 128, num_convs: int = 2) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(backbone, last_stage, trainable_stages=last_stage + 1, norm="bn")
        self.stride = self.backbone.stride

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for k in range(num_convs):
                layers += [
                    nn.Conv2d(self.backbone.num_channels if k == 0 else width, width, 3, padding=1),
                    nn.GroupNorm(32 if width % 32 == 0 else 1, width),
                    nn.ReLU(inplace=True),
                ]
            return nn.Sequential(*layers)

        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls_head = nn.Conv2d(width, 1, 3, padding=1)
        self.box_head = nn.Conv2d(width, 4, 3, padding=1)
        self.landmark_head = nn.Conv2d(width, 10, 3, padding=1)
        for head in (self.cls_head, self.box_head, self.landmark_head):
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        # A prior of 1% faces per position, as RetinaNet: the focal loss starts near its minimum
        # on the many background positions instead of being swamped by them.
        nn.init.constant_(self.cls_head.bias, -math.log(99.0))

    def points(self, height: int, width: int, device: torch.device) -> Tensor:
        """``[h * w, 2]`` pixel coordinates (x, y) of the feature map's cell centres."""
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * self.stride
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * self.stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.backbone(images)
        batch, _, height, width = features.shape
        points = self.points(height, width, images.device)
        cls, reg = self.cls_tower(features), self.reg_tower(features)
        logits = self.cls_head(cls).flatten(1)
        # Distances to the four sides, in strides, kept positive by softplus.
        distances = F.softplus(self.box_head(reg)).flatten(2).transpose(1, 2) * self.stride
        boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
        offsets = self.landmark_head(reg).flatten(2).transpose(1, 2).reshape(batch, -1, 5, 2)
        landmarks = points[None, :, None, :] + offsets * self.stride
        return {"logits": logits, "boxes": boxes, "landmarks": landmarks, "points": points}


@export("models.face_detector_postprocess")
def face_detector_postprocess(
    outputs: dict[str, Tensor],
    score_threshold: float = 0.5,
    iou_threshold: float = 0.4,
    top_k: int = 100,
    scale: Tensor | None = None,
    image_sizes: Tensor | None = None,
) -> list[dict[str, Tensor]]:
    """Faces per image from :class:`FaceDetector`'s outputs: score above ``score_threshold``,
    NMS at ``iou_threshold`` (RetinaFace's 0.4), at most ``top_k``.

    Args:
        scale: ``[B, 2]`` (sx, sy) multiplying x and y back to the original image's pixels
            (the inverse of a resize), or ``None``.
        image_sizes: ``[B, 2]`` (height, width) of each image in the pixels of the result
            (after ``scale``): boxes are clipped to it, as a face cut by the border is. Landmarks
            are not: an occluded eye's estimate may lie outside the picture. ``None``: no clipping.

    Returns:
        Per image ``{"boxes": [K, 4] xyxy, "scores": [K], "landmarks": [K, 5, 2]}``.
    """
    # in float32: under precision=bf16 the outputs arrive in bfloat16, which NMS refuses beside float32 scores
    outputs = {key: value.float() for key, value in outputs.items() if key in ("logits", "boxes", "landmarks")}
    scores = outputs["logits"].sigmoid()
    results = []
    for index in range(scores.shape[0]):
        keep = torch.nonzero(scores[index] > score_threshold).squeeze(1)
        boxes, landmarks, found = outputs["boxes"][index, keep], outputs["landmarks"][index, keep], scores[index, keep]
        order = batched_nms(boxes, found, torch.zeros_like(found, dtype=torch.long), iou_threshold)[:top_k]
        boxes, landmarks, found = boxes[order], landmarks[order], found[order]
        if scale is not None:
            boxes = boxes * scale[index].repeat(2)
            landmarks = landmarks * scale[index]
        if image_sizes is not None:
            boxes = clip_boxes_to_image(boxes, tuple(int(side) for side in image_sizes[index]))
        results.append({"boxes": boxes, "scores": found, "landmarks": landmarks})
    return results


@register_model(task="face_detect")
def face_detector_r18(**overrides: object) -> FaceDetector:
    """:class:`FaceDetector` on ResNet-18 up to ``layer2`` (stride 8), towers of 128 channels."""
    return FaceDetector(**overrides)  # type: ignore[arg-type]


@register_model(task="face_detect")
def face_detector_tiny(**overrides: object) -> FaceDetector:
    """A small :class:`FaceDetector` for tests: ResNet-18 to ``layer2``, one 32-channel convolution per tower."""
    settings: dict[str, object] = {"width": 32, "num_convs": 1}
    return FaceDetector(**{**settings, **overrides})  # type: ignore[arg-type]
