"""VarifocalNet: a dense detector that ranks its boxes by an IoU-aware classification score
(Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021).

A ResNet gives ``C3 .. C5``, an :class:`~sightkit.models.fpn.FPN` turns them into ``P3 .. P7``
(strides 8 to 128), and one head, shared by every level, predicts at each feature-map
location:

1. an initial box as distances ``(l, t, r, b)`` from the location to the box's sides
   (FCOS-style: ``exp(scale_i * conv) * anchor size``, one learned scale per level);
2. nine *star-shaped* sampling points from that box: the location, its projections onto the
   four sides and the four corners (the offsets of a 3x3 ``torchvision.ops.deform_conv2d``,
   :func:`star_offsets`); the gradient through the offsets is scaled by 0.1;
3. a refined box, the initial distances times ``exp(scale'_i * conv)`` of deformable-conv
   features sampled at those points (multiplicative refinement of the detached initial box);
4. the IoU-aware classification score (IACS), one sigmoid per class, from deformable-conv
   features sampled at the same points; it is trained to equal the IoU of the refined box
   with its object, so it ranks boxes by localisation quality as well as class.

Training targets come from ATSS (:func:`sightkit.ops.atss_assign`) on one square anchor of
side ``anchor_scale * stride`` per location; see :class:`sightkit.losses.VFNetCriterion`.
The head's convolutions use GroupNorm, as the paper's.

Registered models (``create_model(name, **overrides)``):

=============== ============================== ========= ================ ====== =====
name            backbone                       FPN / head stacked convs     GN     loss
=============== ============================== ========= ================ ====== =====
vfnet_r50       ResNet-50, frozen BN, 3 train  256       3                32     VFL
vfnet_r18_tiny  ResNet-18, BatchNorm, all      64        2                16     VFL
=============== ============================== ========= ================ ====== =====

``vfnet_r50`` is the paper's ResNet-50 model (its mmdetection configuration: P3-P7, anchor
scale 8, ATSS top-9, VFL alpha 0.75 gamma 2, GIoU weights 1.5 and 2.0, NMS 0.6, score
threshold 0.05, 1000 candidates, 100 detections). ``vfnet_r18_tiny`` keeps every
mechanism and shrinks the widths so that it trains from scratch on two CPU cores.

Ablation switches of the paper (Table 3), as builder overrides: ``cls_loss="focal"`` trains
the classifier with the focal loss on one-hot targets instead of the varifocal loss on IoU
targets; ``refine=False`` drops the star-shaped deformable convolutions and the box
refinement (the classifier reads the plain stacked-conv features and the IoU target is the
initial box's).

Inside the model and its criterion, boxes are absolute ``xyxy`` pixels of the (padded) input
image; the output ``"pred_boxes"`` follows the convention of every detector here, ``cxcywh``
in [0, 1] of each image's unpadded size, so that the detection task, export and serving treat
all detectors alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from sightkit._api import export
from sightkit.losses.vfnet_criterion import CLS_LOSSES, VFNetCriterion
from sightkit.models.backbones import build_backbone
from sightkit.models.fpn import FPN
from sightkit.models.registry import register_model
from sightkit.models.seg import ResNetPyramid
from sightkit.ops.boxes import box_convert
from sightkit.ops.nms import batched_diou_nms, batched_nms

NMS_KINDS = ("nms", "diou")
_KERNEL_BASE = (-1.0, 0.0, 1.0)  # a 3x3 kernel's taps relative to its centre, in rows and columns


@export("models.star_offsets")
def star_offsets(distances: Tensor, stride: float, gradient_mul: float = 0.1) -> Tensor:
    """Offsets that move a 3x3 deformable convolution's taps onto the star of a box.

    At every location ``(y, x)`` the taps land, row by row, on ``(y - t, x - l)``,
    ``(y - t, x)``, ``(y - t, x + r)``, ``(y, x - l)``, ``(y, x)``, ``(y, x + r)``,
    ``(y + b, x - l)``, ``(y + b, x)``, ``(y + b, x + r)``: the box's corners, the location's
    projections onto its sides, and the location itself (the box's corners, edge midpoints
    and centre when the location is the centre).

    Args:
        distances: ``[B, 4, H, W]`` ``(l, t, r, b)`` in input pixels.
        stride: input pixels per feature-map cell; offsets are in cells.
        gradient_mul: the share of the gradient that flows back into ``distances`` (the
            paper's 0.1); the rest is cut.

    Returns:
        ``[B, 18, H, W]`` in ``torchvision.ops.deform_conv2d``'s convention for a 3x3 kernel
        with padding 1, stride 1 and dilation 1: for tap ``k = 3i + j`` (row ``i``, column
        ``j``), channel ``2k`` is the vertical and ``2k + 1`` the horizontal offset from the
        tap's regular position ``(y + i - 1, x + j - 1)``.
    """
    if not isinstance(distances, Tensor) or distances.ndim != 4 or distances.shape[1] != 4:
        got = tuple(distances.shape) if isinstance(distances, Tensor) else type(distances).__name__
        raise ValueError(f"distances must have shape [B, 4, H, W] as (l, t, r, b), got {got}")
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    scaled = ((1 - gradient_mul) * distances.detach() + gradient_mul * distances) / stride
    left, top, right, bottom = scaled.unbind(1)
    zero = torch.zeros_like(left)
    base = distances.new_tensor(_KERNEL_BASE)[:, None, None]
    rows = torch.stack((-top, zero, bottom), 1) - base  # [B, 3, H, W], vertical offset of tap row i
    cols = torch.stack((-left, zero, right), 1) - base  # horizontal offset of tap column j
    batch, _, height, width = distances.shape
    taps = torch.stack(
        (rows[:, :, None].expand(-1, 3, 3, -1, -1), cols[:, None].expand(-1, 3, 3, -1, -1)), dim=3
    )  # [B, 3 (i), 3 (j), 2 (dy, dx), H, W]
    return taps.reshape(batch, 18, height, width)


class _Scale(nn.Module):
    """A learned scalar multiplier (one per pyramid level, as in FCOS)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _conv_gn_relu(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


def _deform_conv(conv: DeformConv2d, x: Tensor, offsets: Tensor) -> Tensor:
    """``conv(x, offsets)``, in float32 inside an autocast region: torchvision's deformable
    convolution has no bfloat16 CPU kernel and no CPU autocast rule, so ``precision=bf16`` and
    ``amp=bf16`` on a CPU failed in it (on CUDA torchvision's own rule casts to float32 too)."""
    if not torch.is_autocast_enabled(x.device.type):
        return conv(x, offsets.to(x.dtype))
    with torch.autocast(x.device.type, enabled=False):
        return conv(x.float(), offsets.float())


def level_anchors(
    sizes: Sequence[tuple[int, int]], strides: Sequence[int], anchor_scale: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Locations and ATSS anchors of every pyramid level, level after level, row-major.

    Location ``(i, j)`` of a level with stride ``s`` sits at the centre of its cell,
    ``((j + 0.5) s, (i + 0.5) s)``, and its anchor is the square of side ``anchor_scale * s``
    centred there.

    Returns:
        ``points`` ``[N, 2]`` (x, y) and ``anchors`` ``[N, 4]`` xyxy.
    """
    points, anchors = [], []
    for (height, width), stride in zip(sizes, strides, strict=True):
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
        half = anchor_scale * stride / 2
        points.append(grid)
        anchors.append(torch.cat((grid - half, grid + half), dim=-1))
    return torch.cat(points), torch.cat(anchors)


@export("models.VFNetHead")
class VFNetHead(nn.Module):
    """The VarifocalNet head, shared by all pyramid levels (module docstring, steps 1-4).

    Args:
        num_classes: ``C``, one sigmoid score per class (no background class).
        in_channels: channels of the pyramid levels.
        feat_channels: channels of the head's convolutions (paper: 256).
        stacked_convs: 3x3 conv-GN-ReLU layers in each of the classification and regression
            towers (paper: 3).
        strides: the stride of each input level (paper: 8, 16, 32, 64, 128).
        anchor_scale: the side of a location's anchor (ATSS assignment) and the unit of its
            initial distances, in strides (paper: 8).
        gn_groups: GroupNorm groups (paper: 32).
        refine: star-shaped deformable convolutions and box refinement (False: the paper's
            ablation without them).
        gradient_mul: share of the gradient that flows from the offsets into the initial box.
        prior_prob: initial foreground probability of every score (RetinaNet's 0.01).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 3,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        anchor_scale: float = 8.0,
        gn_groups: int = 32,
        refine: bool = True,
        gradient_mul: float = 0.1,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if feat_channels % gn_groups:
            raise ValueError(f"feat_channels ({feat_channels}) must be a multiple of gn_groups ({gn_groups})")
        if stacked_convs < 0 or anchor_scale <= 0 or not 0 < prior_prob < 1:
            raise ValueError(
                f"need stacked_convs >= 0, anchor_scale > 0 and 0 < prior_prob < 1, got {stacked_convs}, "
                f"{anchor_scale} and {prior_prob}"
            )
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.anchor_scale = float(anchor_scale)
        self.refine = refine
        self.gradient_mul = gradient_mul

        def tower() -> nn.Sequential:
            return nn.Sequential(
                *(
                    _conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels, gn_groups)
                    for i in range(stacked_convs)
                )
            )

        self.cls_tower, self.reg_tower = tower(), tower()
        tower_channels = feat_channels if stacked_convs else in_channels
        self.reg_conv = _conv_gn_relu(tower_channels, feat_channels, gn_groups)
        self.reg_init = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.scales = nn.ModuleList(_Scale() for _ in self.strides)
        self.relu = nn.ReLU(inplace=True)
        if refine:
            self.reg_refine_dconv = DeformConv2d(tower_channels, feat_channels, 3, padding=1, bias=False)
            self.reg_refine = nn.Conv2d(feat_channels, 4, 3, padding=1)
            self.refine_scales = nn.ModuleList(_Scale() for _ in self.strides)
            self.cls_dconv = DeformConv2d(tower_channels, feat_channels, 3, padding=1, bias=False)
        self.cls_score = nn.Conv2d(feat_channels if refine else tower_channels, num_classes, 3, padding=1)
        # The mmdetection initialisation of FCOS-family heads: N(0, 0.01) weights, zero biases,
        # and a classification bias that starts every score at prior_prob.
        for module in self.modules():
            if isinstance(module, nn.Conv2d | DeformConv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]) -> dict[str, Any]:
        """Predict at every location of every level.

        Args:
            features: ``len(strides)`` maps ``[B, in_channels, H_i, W_i]``, finest first.

        Returns:
            A dict with, over the ``N = sum H_i W_i`` locations (level after level, row-major):

            - ``"pred_logits"``: ``[B, N, C]`` IACS logits;
            - ``"pred_boxes_init"``: ``[B, N, 4]`` initial boxes, absolute ``xyxy``;
            - ``"pred_boxes_refine"`` (with ``refine``): ``[B, N, 4]`` refined boxes, ``xyxy``;
            - ``"anchors"``: ``[N, 4]`` the locations' ATSS anchors, ``xyxy``;
            - ``"level_sizes"``: the ``H_i W_i`` of each level (a list of ints).
        """
        if len(features) != len(self.strides):
            raise ValueError(f"features must be {len(self.strides)} maps (one per stride), got {len(features)}")
        logits, init, refined = [], [], []
        for level, (x, stride) in enumerate(zip(features, self.strides, strict=True)):
            cls_feat, reg_feat = self.cls_tower(x), self.reg_tower(x)
            # Distances are predicted in log space, in units of the level's anchor size (mmdetection's
            # "reg_denom" normalisation); float32 so that exp stays finite under autocast.
            unit = self.anchor_scale * stride
            distances = self.scales[level](self.reg_init(self.reg_conv(reg_feat))).float().exp() * unit
            init.append(distances)
            if self.refine:
                offsets = star_offsets(distances, stride, self.gradient_mul)
                refine_feat = self.relu(_deform_conv(self.reg_refine_dconv, reg_feat, offsets))
                factor = self.refine_scales[level](self.reg_refine(refine_feat)).float().exp()
                refined.append(factor * distances.detach())
                cls_feat = self.relu(_deform_conv(self.cls_dconv, cls_feat, offsets))
            logits.append(self.cls_score(cls_feat))
        sizes = [tuple(t.shape[-2:]) for t in logits]
        points, anchors = level_anchors(sizes, self.strides, self.anchor_scale, logits[0].device)

        def flat(maps: list[Tensor]) -> Tensor:
            return torch.cat([m.flatten(2) for m in maps], dim=2).transpose(1, 2)  # [B, N, channels]

        outputs: dict[str, Any] = {
            "pred_logits": flat(logits),
            "pred_boxes_init": _decode(points, flat(init)),
            "anchors": anchors,
            "level_sizes": [h * w for h, w in sizes],
        }
        if self.refine:
            outputs["pred_boxes_refine"] = _decode(points, flat(refined))
        return outputs


def _decode(points: Tensor, distances: Tensor) -> Tensor:
    """``[N, 2]`` locations and ``[B, N, 4]`` ``(l, t, r, b)`` -> ``[B, N, 4]`` xyxy."""
    return torch.cat((points - distances[..., :2], points + distances[..., 2:]), dim=-1)


def final_boxes(outputs: dict[str, Any]) -> Tensor:
    """The boxes a VFNet output dict ranks: the refined ones, or the initial ones without refinement."""
    return outputs.get("pred_boxes_refine", outputs["pred_boxes_init"])


@export("models.vfnet_postprocess")
def vfnet_postprocess(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    image_sizes: Tensor,
    top_k: int = 100,
    score_threshold: float = 0.05,
    pre_nms_top_k: int = 1000,
    iou_threshold: float = 0.6,
    nms: str = "nms",
) -> list[dict[str, Tensor]]:
    """Detections of each image from dense scores and boxes, best first.

    Every (location, class) pair whose sigmoid score exceeds ``score_threshold`` is a
    candidate, and the ``pre_nms_top_k`` best of each image are kept (over all levels at once:
    the outputs no longer say which level a location came from; mmdetection keeps that many
    per level, which makes no difference unless an image has more candidates above the
    threshold than that); boxes are clipped to the image, empty ones dropped, and per-class NMS
    (``"nms"``: IoU, ``"diou"``: distance IoU) keeps the ``top_k`` best.

    Args:
        pred_logits: ``[B, N, C]`` IACS logits.
        pred_boxes: ``[B, N, 4]`` ``cxcywh`` in [0, 1] relative to each image's unpadded size
            (VFNet's ``"pred_boxes"``, the DETR convention).
        image_sizes: ``[B, 2]`` (height, width) in pixels that the output boxes should be in,
            usually the original image's size before resizing.
        top_k: most detections per image, after NMS.
        score_threshold: candidates score above it (paper: 0.05).
        pre_nms_top_k: most candidates per image before NMS (paper: 1000).
        iou_threshold: NMS drops boxes overlapping a better box of their class by more (paper: 0.6).
        nms: ``"nms"`` (greedy IoU NMS, the paper's) or ``"diou"`` (DIoU-NMS).

    Returns:
        One dict per image with ``"scores"`` ``[K]``, ``"labels"`` ``[K]`` int64 in
        ``0 .. C - 1`` and ``"boxes"`` ``[K, 4]`` absolute ``xyxy``, by decreasing score,
        ``K <= top_k``.
    """
    if not isinstance(pred_logits, Tensor) or pred_logits.ndim != 3:
        got = tuple(pred_logits.shape) if isinstance(pred_logits, Tensor) else type(pred_logits).__name__
        raise ValueError(f"pred_logits must have shape [B, N, C], got {got}")
    batch, num_points, num_classes = pred_logits.shape
    if not isinstance(pred_boxes, Tensor) or pred_boxes.shape != (batch, num_points, 4):
        got = tuple(pred_boxes.shape) if isinstance(pred_boxes, Tensor) else type(pred_boxes).__name__
        raise ValueError(f"pred_boxes must have shape [B, N, 4] = {[batch, num_points, 4]}, got {got}")
    image_sizes = torch.as_tensor(image_sizes, device=pred_boxes.device)
    if image_sizes.shape != (batch, 2):
        raise ValueError(
            f"image_sizes must have shape [B, 2] = {[batch, 2]} as (height, width), got {tuple(image_sizes.shape)}"
        )
    if nms not in NMS_KINDS:
        raise ValueError(f"nms must be one of {NMS_KINDS}, got {nms!r}")
    if top_k < 1 or pre_nms_top_k < 1:
        raise ValueError(f"top_k and pre_nms_top_k must be >= 1, got {top_k} and {pre_nms_top_k}")
    suppress = batched_nms if nms == "nms" else batched_diou_nms
    scores = pred_logits.detach().float().sigmoid().flatten(1)  # [B, N * C], location-major
    height, width = image_sizes.float().unbind(-1)
    scale = torch.stack((width, height, width, height), dim=-1)[:, None, :]
    boxes = (box_convert(pred_boxes.detach().float(), "cxcywh", "xyxy").clamp(0, 1) * scale).unbind(0)
    results = []
    for image_scores, image_boxes in zip(scores, boxes, strict=True):
        candidates = torch.nonzero(image_scores > score_threshold).squeeze(1)
        best = image_scores[candidates].topk(min(pre_nms_top_k, candidates.numel()))
        index = candidates[best.indices]
        score, labels, box = best.values, index % num_classes, image_boxes[index // num_classes]
        valid = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
        score, labels, box = score[valid], labels[valid], box[valid]
        keep = suppress(box, score, labels, iou_threshold)[:top_k]
        results.append({"scores": score[keep], "labels": labels[keep], "boxes": box[keep]})
    return results


@export("models.VFNet")
class VFNet(nn.Module):
    """The VarifocalNet detector: ResNet, FPN, :class:`VFNetHead` (module docstring).

    Args:
        backbone: a torchvision ResNet up to layer4 from :func:`build_backbone`.
        num_classes: ``C``.
        fpn_channels: channels of the pyramid (paper: 256).
        upsample: the FPN's top-down upsampling mode (:class:`sightkit.nn.Upsample`).
        cls_loss: ``"varifocal"`` (the paper) or ``"focal"`` (the ablation); the criterion's
            choice, kept here so that a model name and its overrides say how it trains.
        nms, iou_threshold, score_threshold, pre_nms_top_k: postprocessing settings, see
            :func:`vfnet_postprocess`.
        head: keyword arguments of :class:`VFNetHead` (``in_channels`` is ``fpn_channels``).

    Training targets are absolute ``xyxy`` boxes in input pixels (:attr:`target_box_format`),
    not DETR's normalised ``cxcywh``: ATSS and the GIoU losses work in pixels.
    """

    #: The box format the criterion's targets are in (the detection task collates accordingly).
    target_box_format = "xyxy"
    #: ``forward`` does not take the targets (ATSS assignment happens in the criterion).
    reads_targets = False
    #: Sigmoid classes: no "no object" logit.
    no_object_class = False

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        fpn_channels: int = 256,
        upsample: str = "nearest",
        cls_loss: str = "varifocal",
        nms: str = "nms",
        iou_threshold: float = 0.6,
        score_threshold: float = 0.05,
        pre_nms_top_k: int = 1000,
        **head: Any,
    ) -> None:
        super().__init__()
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
        if nms not in NMS_KINDS:
            raise ValueError(f"nms must be one of {NMS_KINDS}, got {nms!r}")
        self.backbone = ResNetPyramid(backbone)
        self.head = VFNetHead(num_classes, in_channels=fpn_channels, **head)
        # C3..C5 feed the pyramid; each stride above C5's 32 is one extra level.
        extra_levels = len(self.head.strides) - 3
        self.fpn = FPN(self.backbone.channels[-3:], fpn_channels, extra_levels=extra_levels, upsample=upsample)
        self.num_classes = num_classes
        self.cls_loss = cls_loss
        self.nms, self.iou_threshold = nms, iou_threshold
        self.score_threshold, self.pre_nms_top_k = score_threshold, pre_nms_top_k

    def forward(self, images: Tensor, mask: Tensor | None = None) -> dict[str, Any]:
        """Detect objects.

        Args:
            images: ``[B, 3, H, W]`` float, normalised; a batch of images of different sizes
                is padded at the bottom and right (locations on the padding have no objects).
            mask: ``[B, H, W]`` bool, True on padding; None when nothing is padded.

        Returns:
            :meth:`VFNetHead.forward`'s dict (absolute ``xyxy`` boxes in input pixels, for the
            criterion) plus ``"pred_boxes"``: ``[B, N, 4]`` the final boxes (refined, or
            initial without refinement) as ``cxcywh`` in [0, 1] relative to each image's
            unpadded size, the convention of every detector here (see :func:`vfnet_postprocess`).
        """
        _check_inputs(images, mask)
        outputs = self.head(self.fpn(self.backbone(images)[-3:]))
        if mask is None:
            heights = images.new_full((images.shape[0],), images.shape[-2])
            widths = images.new_full((images.shape[0],), images.shape[-1])
        else:
            valid = ~mask
            heights, widths = valid.any(2).sum(1).to(images.dtype), valid.any(1).sum(1).to(images.dtype)
        scale = torch.stack((widths, heights, widths, heights), dim=-1)[:, None, :]
        outputs["pred_boxes"] = box_convert(final_boxes(outputs) / scale, "xyxy", "cxcywh")
        return outputs

    def build_criterion(self, **overrides: Any) -> VFNetCriterion:
        """The criterion this model trains with: :class:`VFNetCriterion` for its ``C`` classes and
        its ``cls_loss``; ``overrides`` go to it. Its ``weight_dict`` holds the loss weights."""
        criterion = VFNetCriterion(self.num_classes, **{"cls_loss": self.cls_loss, **overrides})
        if not self.head.refine:  # without refined boxes there is no refined-box loss to weigh
            del criterion.weight_dict["loss_bbox_refine"]
        return criterion

    @torch.no_grad()
    def postprocess(
        self, pred_logits: Tensor, pred_boxes: Tensor, image_sizes: Tensor, top_k: int = 100
    ) -> list[dict[str, Tensor]]:
        """:func:`vfnet_postprocess` with this model's thresholds and NMS."""
        return vfnet_postprocess(
            pred_logits,
            pred_boxes,
            image_sizes,
            top_k=top_k,
            score_threshold=self.score_threshold,
            pre_nms_top_k=self.pre_nms_top_k,
            iou_threshold=self.iou_threshold,
            nms=self.nms,
        )


def _check_inputs(images: Tensor, mask: Tensor | None) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        got = f"{images.dtype} of shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape [B, 3, H, W], got {got}")
    if mask is None:
        return
    batch, _, height, width = images.shape
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (batch, height, width):
        got = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape [B, H, W] = {[batch, height, width]}, got {got}")


@export("models.build_vfnet")
def build_vfnet(
    num_classes: int = 80,
    backbone: str = "resnet50",
    trainable_stages: int = 3,
    backbone_norm: str = "frozen_bn",
    fpn_channels: int = 256,
    upsample: str = "nearest",
    feat_channels: int = 256,
    stacked_convs: int = 3,
    gn_groups: int = 32,
    anchor_scale: float = 8.0,
    refine: bool = True,
    cls_loss: str = "varifocal",
    nms: str = "nms",
    iou_threshold: float = 0.6,
    score_threshold: float = 0.05,
    pre_nms_top_k: int = 1000,
) -> VFNet:
    """Build a :class:`VFNet` from plain settings; the defaults are the paper's (``vfnet_r50``,
    80 COCO classes). ``backbone``, ``trainable_stages`` and ``backbone_norm`` go to
    :func:`build_backbone` (up to layer4); the head settings to :class:`VFNetHead`."""
    return VFNet(
        build_backbone(backbone, last_stage=4, trainable_stages=trainable_stages, norm=backbone_norm),
        num_classes,
        fpn_channels=fpn_channels,
        upsample=upsample,
        cls_loss=cls_loss,
        nms=nms,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pre_nms_top_k=pre_nms_top_k,
        feat_channels=feat_channels,
        stacked_convs=stacked_convs,
        gn_groups=gn_groups,
        anchor_scale=anchor_scale,
        refine=refine,
    )


@register_model(task="detect")
def vfnet_r50(**overrides: Any) -> VFNet:
    """The paper's VarifocalNet with ResNet-50 (stem and layer1 frozen, frozen BN), FPN 256,
    3 stacked GN convs, VFL. Keyword arguments override :func:`build_vfnet`'s settings."""
    return build_vfnet(**overrides)


@register_model(task="detect")
def vfnet_r18_tiny(**overrides: Any) -> VFNet:
    """A small VarifocalNet for CPU training from scratch: ResNet-18 with ordinary BatchNorm,
    every stage trained, FPN and head 64 wide, 2 stacked convs, GroupNorm with 16 groups.
    Keyword arguments override these settings."""
    settings: dict[str, Any] = {
        "backbone": "resnet18",
        "trainable_stages": 5,
        "backbone_norm": "bn",
        "fpn_channels": 64,
        "feat_channels": 64,
        "stacked_convs": 2,
        "gn_groups": 16,
    }
    return build_vfnet(**{**settings, **overrides})
