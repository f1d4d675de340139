"""MTCNN face detector with 5 landmarks (Zhang et al., "Joint Face Detection and Alignment
using Multi-task Cascaded Convolutional Networks", IEEE SPL 2016), on pretrained weights.

Three small networks in a cascade: P-Net scans an image pyramid as a fully convolutional
12 x 12 window classifier and proposes boxes; R-Net re-scores and refines 24 x 24 crops of
the proposals; O-Net scores 48 x 48 crops once more, refines the boxes and regresses the 5
landmarks (eyes, nose tip, mouth corners, image-left first: ArcFace's order).

This project cannot download weights, but the facenet-pytorch wheel on PyPI ships MTCNN's
(converted from the authors' Caffe models) as three ``.pt`` state dicts. :func:`load_mtcnn`
reads them straight out of the wheel file, without installing the package::

    pip download --no-deps facenet-pytorch==2.6.0 -d runs/weights

The networks and the cascade are written here. Differences from facenet-pytorch's port
(which keeps the MATLAB original's 1-based pixel arithmetic): boxes and landmarks are in
continuous pixel coordinates (pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``), and the
R-Net/O-Net crops are taken with ``roi_align`` for all boxes at once, zeros outside the
image as in the original (facenet-pytorch clips such crops instead, which stretches them).
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, roi_align

from sightkit._api import export

#: Where :func:`load_mtcnn` looks for the facenet-pytorch wheel by default.
DEFAULT_WHEEL = Path("runs/weights/facenet_pytorch-2.6.0-py3-none-any.whl")
WHEEL_HINT = "pip download --no-deps facenet-pytorch==2.6.0 -d runs/weights"


class PNet(nn.Module):
    """Proposal network: ``[B, 3, H, W]`` -> box offsets ``[B, 4, h, w]`` and face probability
    ``[B, h, w]`` per 12 x 12 window at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


def _flatten_caffe(x: Tensor) -> Tensor:
    # The converted dense weights expect Caffe's (width, height, channel) order of the map.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network: 24 x 24 crops ``[N, 3, 24, 24]`` -> offsets ``[N, 4]``, face probability ``[N]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_caffe(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network: 48 x 48 crops -> offsets ``[N, 4]``, landmarks ``[N, 10]`` (x1..x5, y1..y5
    as fractions of the crop), face probability ``[N]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_caffe(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


def _regress(boxes: Tensor, offsets: Tensor) -> Tensor:
    """Apply MTCNN's box regression: each side moves by its offset times the box's width/height."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def _square(boxes: Tensor) -> Tensor:
    """The square with each box's centre and longer side (the networks see square crops)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], dim=1)


def _nms_min(boxes: Tensor, scores: Tensor, groups: Tensor, threshold: float) -> Tensor:
    """Greedy NMS with overlap = intersection / smaller area (MTCNN's last stage), per group:
    drops a box mostly contained in a better one even when their IoU is small."""
    order = torch.argsort(scores, descending=True)
    boxes, groups = boxes[order], groups[order]
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1)
    low = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    high = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    overlap = (high - low).clamp(min=0).prod(2) / torch.minimum(area[:, None], area[None, :]).clamp(min=1e-9)
    suppress = (overlap > threshold) & (groups[:, None] == groups[None, :])
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):  # a few dozen boxes at this stage
        if keep[i]:
            keep[i + 1 :] &= ~suppress[i, i + 1 :]
    return order[keep]


@export("models.MTCNN")
class MTCNN(nn.Module):
    """The MTCNN cascade (module docstring). :meth:`detect` finds faces with 5 landmarks.

    Args:
        min_face: smallest face side in pixels searched for (sets the pyramid's first scale).
        thresholds: face probability each stage requires (P-Net, R-Net, O-Net).
        factor: scale step of the image pyramid.
    """

    def __init__(
        self, min_face: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709
    ) -> None:
        super().__init__()
        if min_face < 12 or not 0 < factor < 1 or len(thresholds) != 3:
            raise ValueError(
                f"need min_face >= 12, factor in (0, 1) and 3 thresholds, got {min_face}, {factor}, {thresholds}"
            )
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.min_face, self.thresholds, self.factor = min_face, tuple(thresholds), factor

    @staticmethod
    def _normalise(pixels: Tensor) -> Tensor:
        return (pixels - 127.5) * 0.0078125

    def _proposals(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """P-Net over the pyramid: ``(boxes [K, 4], scores [K], image index [K])`` after NMS."""
        height, width = images.shape[-2:]
        scale = 12.0 / self.min_face
        side = min(height, width) * scale
        found_boxes, found_scores, found_images = [], [], []
        while side >= 12:
            size = (math.ceil(height * scale), math.ceil(width * scale))
            offsets, probability = self.pnet(self._normalise(F.interpolate(images, size=size, mode="area")))
            image, row, column = torch.nonzero(probability >= self.thresholds[0], as_tuple=True)
            # Cell (row, column) saw the window [2 column, 2 column + 12) x [2 row, 2 row + 12) of this scale.
            corner = torch.stack([column, row], dim=1).to(images.dtype) * 2
            boxes = _regress(torch.cat([corner, corner + 12], dim=1) / scale, offsets[image, :, row, column])
            scores = probability[image, row, column]
            keep = batched_nms(boxes, scores, image, 0.5)
            found_boxes.append(boxes[keep])
            found_scores.append(scores[keep])
            found_images.append(image[keep])
            scale *= self.factor
            side *= self.factor
        boxes, scores, image = torch.cat(found_boxes), torch.cat(found_scores), torch.cat(found_images)
        keep = batched_nms(boxes, scores, image, 0.7)
        return torch.cat([_square(boxes[keep]), scores[keep, None]], dim=1), image[keep]

    @staticmethod
    def _crops(images: Tensor, boxes: Tensor, image: Tensor, size: int) -> Tensor:
        rois = torch.cat([image[:, None].to(boxes.dtype), boxes], dim=1)
        # aligned=True: continuous coordinates (pixel centres at +0.5); zeros outside the image.
        return roi_align(images, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Faces in each image.

        Args:
            images: ``[B, 3, H, W]`` RGB, uint8 or float in [0, 255].

        Returns:
            Per image ``{"boxes": [K, 4] xyxy, "scores": [K], "landmarks": [K, 5, 2]}``, in
            pixels of the image (continuous coordinates), by decreasing score.
        """
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor [B, 3, H, W] of RGB pixels in [0, 255], got {got}")
        device = next(self.parameters()).device
        images = images.to(device=device, dtype=torch.float32)
        empty = {"boxes": images.new_zeros(0, 4), "scores": images.new_zeros(0), "landmarks": images.new_zeros(0, 5, 2)}
        found, image = self._proposals(images)
        if found.shape[0]:
            offsets, probability = self.rnet(self._normalise(self._crops(images, found[:, :4], image, 24)))
            keep = probability > self.thresholds[1]
            found, image, offsets, probability = found[keep], image[keep], offsets[keep], probability[keep]
            keep = batched_nms(found[:, :4], probability, image, 0.7)
            boxes = _square(_regress(found[keep, :4], offsets[keep]))
            found, image = torch.cat([boxes, probability[keep, None]], dim=1), image[keep]
        results = []
        if found.shape[0]:
            offsets, points, probability = self.onet(self._normalise(self._crops(images, found[:, :4], image, 48)))
            keep = probability > self.thresholds[2]
            boxes, image, offsets, points, probability = (
                found[keep, :4],
                image[keep],
                offsets[keep],
                points[keep],
                probability[keep],
            )
            size = boxes[:, 2:] - boxes[:, :2]
            landmarks = torch.stack([points[:, :5], points[:, 5:]], dim=2) * size[:, None] + boxes[:, None, :2]
            boxes = _regress(boxes, offsets)
            keep = _nms_min(boxes.cpu(), probability.cpu(), image.cpu(), 0.7).to(device)
            boxes, image, landmarks, probability = boxes[keep], image[keep], landmarks[keep], probability[keep]
        else:
            image = torch.zeros(0, dtype=torch.long, device=device)
        for index in range(images.shape[0]):
            mine = image == index
            if not found.shape[0] or not bool(mine.any()):
                results.append({k: v.clone() for k, v in empty.items()})
                continue
            results.append({"boxes": boxes[mine], "scores": probability[mine], "landmarks": landmarks[mine]})
        return results


@export("models.load_mtcnn")
def load_mtcnn(wheel: str | Path = "", **settings: object) -> MTCNN:
    """An :class:`MTCNN` with the pretrained weights read from the facenet-pytorch wheel.

    Args:
        wheel: the ``facenet_pytorch-2.6.0-py3-none-any.whl`` file (or a folder holding it);
            ``""`` looks in ``runs/weights/``.
        settings: :class:`MTCNN`'s keyword arguments.

    Raises:
        FileNotFoundError: no wheel there; the message gives the command that downloads it.
    """
    path = Path(wheel) if str(wheel) else DEFAULT_WHEEL
    if path.is_dir():
        path = path / DEFAULT_WHEEL.name
    if not path.is_file():
        raise FileNotFoundError(
            f"MTCNN's weights come from the facenet-pytorch wheel, which is not at {path}; download it "
            f"(without installing it) with `{WHEEL_HINT}`, or pass its path"
        )
    model = MTCNN(**settings)  # type: ignore[arg-type]
    with zipfile.ZipFile(path) as archive:
        for name in ("pnet", "rnet", "onet"):
            data = archive.read(f"facenet_pytorch/data/{name}.pt")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            getattr(model, name).load_state_dict(state)
    return model.eval()
