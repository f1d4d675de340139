"""Turn DETR's raw outputs into detections: scores, labels and absolute ``xyxy`` boxes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sightkit._api import export
from sightkit.ops.boxes import box_convert


@export("models.detr_postprocess")
def detr_postprocess(
    pred_logits: Tensor, pred_boxes: Tensor, image_sizes: Tensor, top_k: int = 100, score_threshold: float = 0.0
) -> list[dict[str, Tensor]]:
    """Detections of each image, best first.

    As in DETR, each query gives one detection: its most likely real class (the "no
    object" logit takes part in the softmax but is never a label), scored by that class's
    probability. The ``top_k`` best queries with a score of at least ``score_threshold``
    are kept, and their boxes are scaled from relative ``cxcywh`` to absolute ``xyxy``
    clipped to the image.

    Args:
        pred_logits: ``[B, Q, C + 1]`` class logits, the last one "no object".
        pred_boxes: ``[B, Q, 4]`` ``cxcywh`` in [0, 1] relative to the image size.
        image_sizes: ``[B, 2]`` (height, width) of each image in pixels: the size the
            output boxes should be in, usually the original image's size before resizing.
        top_k: most detections per image.
        score_threshold: drop detections scoring below it.

    Returns:
        One dict per image with ``"scores"`` ``[K]``, ``"labels"`` ``[K]`` int64 in
        ``0 .. C - 1`` and ``"boxes"`` ``[K, 4]`` absolute ``xyxy``, sorted by decreasing score,
        ``K <= min(top_k, Q)``.
    """
    if not isinstance(pred_logits, Tensor) or pred_logits.ndim != 3 or pred_logits.shape[-1] < 2:
        got = tuple(pred_logits.shape) if isinstance(pred_logits, Tensor) else type(pred_logits).__name__
        raise ValueError(f"pred_logits must have shape [B, Q, C + 1] with C >= 1, got {got}")
    batch, queries = pred_logits.shape[:2]
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
    probs = pred_logits.float().softmax(-1)[..., :-1]
    scores, labels = probs.max(-1)
    height, width = image_sizes.float().unbind(-1)
    scale = torch.stack((width, height, width, height), dim=-1)[:, None, :]
    boxes = box_convert(pred_boxes.float(), "cxcywh", "xyxy").clamp(0, 1) * scale
    k = min(top_k, queries)
    top_scores, order = scores.topk(k, dim=-1)
    results = []
    for image_scores, image_order, image_labels, image_boxes in zip(top_scores, order, labels, boxes, strict=True):
        keep = image_scores >= score_threshold
        kept = image_order[keep]
        results.append({"scores": image_scores[keep], "labels": image_labels[kept], "boxes": image_boxes[kept]})
    return results


@export("models.DETRPostProcess")
class DETRPostProcess(nn.Module):
    """Module form of :func:`detr_postprocess`: holds ``top_k`` and ``score_threshold`` and
    takes the model's output dict."""

    def __init__(self, top_k: int = 100, score_threshold: float = 0.0) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.score_threshold = score_threshold

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """``outputs``: the dict of :class:`DETR` (``pred_logits``, ``pred_boxes``);
        ``image_sizes``: ``[B, 2]`` (height, width). See :func:`detr_postprocess`."""
        return detr_postprocess(
            outputs["pred_logits"], outputs["pred_boxes"], image_sizes, self.top_k, self.score_threshold
        )
