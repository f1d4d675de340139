"""Turn the raw outputs of a sigmoid-classification DETR (DINO, Deformable DETR, RT-DETR) into
detections: scores, labels and absolute ``xyxy`` boxes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sightkit._api import export
from sightkit.ops.boxes import box_convert


@export("models.dino_postprocess")
def dino_postprocess(
    pred_logits: Tensor, pred_boxes: Tensor, image_sizes: Tensor, top_k: int = 100, score_threshold: float = 0.0
) -> list[dict[str, Tensor]]:
    """Detections of each image, best first.

    Each class of each query is a candidate scored by its sigmoid probability (there is no
    "no object" class); the ``top_k`` best (query, class) pairs over all ``Q x C`` are kept, as
    Deformable DETR and DINO do, so one query may give detections of several classes. Boxes are
    scaled from relative ``cxcywh`` to absolute ``xyxy`` and clipped to the image.

    Args:
        pred_logits: ``[B, Q, C]`` class logits.
        pred_boxes: ``[B, Q, 4]`` ``cxcywh`` in [0, 1] relative to the image size.
        image_sizes: ``[B, 2]`` (height, width) in pixels of the size the boxes should have,
            usually the original image's.
        top_k: most detections per image.
        score_threshold: drop detections scoring below it.

    Returns:
        One dict per image with ``"scores"`` ``[K]``, ``"labels"`` ``[K]`` int64 in ``0 .. C - 1``
        and ``"boxes"`` ``[K, 4]`` absolute ``xyxy``, sorted by decreasing score, ``K <= min(top_k, Q * C)``.
    """
    if not isinstance(pred_logits, Tensor) or pred_logits.ndim != 3 or pred_logits.shape[-1] < 1:
        got = tuple(pred_logits.shape) if isinstance(pred_logits, Tensor) else type(pred_logits).__name__
        raise ValueError(f"pred_logits must have shape [B, Q, C] with C >= 1, got {got}")
    batch, queries, classes = pred_logits.shape
    if not isinstance(pred_boxes, Tensor) or pred_boxes.shape != (batch, queries, 4):
        got = tuple(pred_boxes.shape) if isinstance(pred_boxes, Tensor) else type(pred_boxes).__name__
        raise ValueError(f"pred_boxes must have shape [B, Q, 4] = {[batch, queries, 4]}, got {got}")
    image_sizes = torch.as_tensor(image_sizes, device=pred_boxes.device)
    if image_sizes.shape != (batch, 2):
        raise ValueError(
            f"image_sizes must have shape [B, 2] = {[batch, 2]} as (height, width), got {tuple(image_sizes.shape)}"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    scores = pred_logits.float().sigmoid().flatten(1)
    top_scores, top_index = scores.topk(min(top_k, queries * classes), dim=-1)
    labels = top_index % classes
    query = torch.div(top_index, classes, rounding_mode="floor")
    height, width = image_sizes.float().unbind(-1)
    scale = torch.stack((width, height, width, height), dim=-1)[:, None, :]
    boxes = box_convert(pred_boxes.float(), "cxcywh", "xyxy").clamp(0, 1) * scale
    boxes = boxes.gather(1, query[..., None].expand(-1, -1, 4))
    results = []
    for image_scores, image_labels, image_boxes in zip(top_scores, labels, boxes, strict=True):
        keep = image_scores >= score_threshold
        results.append({"scores": image_scores[keep], "labels": image_labels[keep], "boxes": image_boxes[keep]})
    return results


@export("models.DINOPostProcess")
class DINOPostProcess(nn.Module):
    """Module form of :func:`dino_postprocess`: holds ``top_k`` and ``score_threshold`` and
    takes the model's output dict."""

    def __init__(self, top_k: int = 100, score_threshold: float = 0.0) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.score_threshold = score_threshold

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """``outputs``: a dict with ``pred_logits`` ``[B, Q, C]`` and ``pred_boxes``; ``image_sizes``:
        ``[B, 2]`` (height, width). See :func:`dino_postprocess`."""
        return dino_postprocess(
            outputs["pred_logits"], outputs["pred_boxes"], image_sizes, self.top_k, self.score_threshold
        )
