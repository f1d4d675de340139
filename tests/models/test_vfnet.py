"""VarifocalNet: star-shaped offsets in deform_conv2d's convention, locations and anchors, the
multiplicative refinement, padding-aware output boxes, gradients, the paper's configuration,
the ablation switches and postprocessing by hand. ONNX parity is checked on the exported
file of ``sightkit export onnx`` in tests/tasks/test_detect_vfnet.py."""

import math

import pytest
import torch
from torchvision.ops import DeformConv2d, deform_conv2d

from sightkit.models import VFNet, create_model, list_models, star_offsets, vfnet_postprocess
from sightkit.models.vfnet import level_anchors
from sightkit.ops import box_convert

VFNET_MODELS = [name for name in list_models() if name.startswith("vfnet")]


def sample_points(offsets: torch.Tensor, y: int, x: int, height: int, width: int) -> torch.Tensor:
    """Where a 3x3 deform_conv2d (padding 1) samples for output (y, x), read through the kernel:
    the input's two channels are the row and column coordinates (linear, so bilinear sampling
    returns the sampled position exactly), and a one-hot weight picks one tap at a time."""
    rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
    coordinates = torch.stack((rows, cols))[None]
    points = []
    for tap in range(9):
        weight = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
        weight[0, 0].view(-1)[tap] = 1.0
        weight[1, 1].view(-1)[tap] = 1.0
        out = deform_conv2d(coordinates, offsets.double(), weight, padding=1)
        points.append(out[0, :, y, x])
    return torch.stack(points)  # [9, 2] (row, column) per tap


def test_star_offsets_sample_corners_edge_midpoints_and_centre() -> None:
    """A location at the centre of its box, (l, t, r, b) = (16, 8, 16, 8) pixels at stride 4:
    4 and 2 cells. The 9 taps land on the box's corners, edge midpoints and centre, row by row."""
    height, width, y, x, stride = 16, 16, 8, 7, 4
    distances = torch.zeros(1, 4, height, width)
    distances[0, :, y, x] = torch.tensor([16.0, 8.0, 16.0, 8.0])
    offsets = star_offsets(distances, stride)
    # Tap 0 (top-left, regular position (y - 1, x - 1)) moves to (y - 2, x - 4): offset (-1, -3).
    assert offsets[0, :2, y, x].tolist() == [-1.0, -3.0]
    expected = [(y + dy, x + dx) for dy in (-2, 0, 2) for dx in (-4, 0, 4)]
    torch.testing.assert_close(sample_points(offsets, y, x, height, width), torch.tensor(expected).double())


def test_star_offsets_for_an_off_centre_location() -> None:
    """(l, t, r, b) = (6, 2, 2, 10) pixels at stride 2: the taps reach x - 3, x + 1 and y - 1,
    y + 5 (cells), the location's projections onto the sides sit on its own row and column."""
    height, width, y, x = 12, 10, 4, 5
    distances = torch.zeros(1, 4, height, width)
    distances[0, :, y, x] = torch.tensor([6.0, 2.0, 2.0, 10.0])
    expected = [(y + dy, x + dx) for dy in (-1, 0, 5) for dx in (-3, 0, 1)]
    torch.testing.assert_close(
        sample_points(star_offsets(distances, 2), y, x, height, width), torch.tensor(expected).double()
    )


def test_star_offsets_pass_a_tenth_of_the_gradient() -> None:
    distances = (torch.rand(2, 4, 3, 5, dtype=torch.float64) * 10).requires_grad_()
    weights = torch.randn(2, 18, 3, 5, dtype=torch.float64)
    (star_offsets(distances, 8) * weights).sum().backward()
    damped = distances.grad.clone()
    distances.grad = None
    (star_offsets(distances, 8, gradient_mul=1.0) * weights).sum().backward()
    torch.testing.assert_close(damped, 0.1 * distances.grad)
    assert distances.grad.abs().sum() > 0


def test_locations_and_anchors() -> None:
    """Locations at cell centres, anchors of side anchor_scale * stride around them, level after level."""
    points, anchors = level_anchors([(2, 3), (1, 2)], [8, 16], 4.0, torch.device("cpu"))
    assert points.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert anchors[0].tolist() == [4 - 16, 4 - 16, 4 + 16, 4 + 16]
    assert anchors[-1].tolist() == [24 - 32, 8 - 32, 24 + 32, 8 + 32]


def tiny(**overrides: object) -> VFNet:
    return create_model("vfnet_r18_tiny", num_classes=3, **overrides)


def test_refinement_multiplies_the_detached_initial_distances() -> None:
    """With the refinement convolution at zero, exp(0) = 1 leaves the initial boxes; a bias of
    log 2 doubles every distance from the location, so the box centre-to-side distances double."""
    model = tiny().eval()
    with torch.no_grad():
        model.head.reg_refine.weight.zero_()
        model.head.reg_refine.bias.zero_()
        images = torch.randn(1, 3, 64, 64)
        out = model(images)
        torch.testing.assert_close(out["pred_boxes_refine"], out["pred_boxes_init"])
        model.head.reg_refine.bias.fill_(math.log(2))
        doubled = model(images)
    points, _ = level_anchors([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)], model.head.strides, 8.0, images.device)
    init, refined = doubled["pred_boxes_init"][0], doubled["pred_boxes_refine"][0]
    torch.testing.assert_close(refined[:, :2] - points, 2 * (init[:, :2] - points))
    torch.testing.assert_close(refined[:, 2:] - points, 2 * (init[:, 2:] - points))


def test_pred_boxes_are_normalised_by_each_image_unpadded_size() -> None:
    """Image 1 is 40 x 56 inside a 64 x 64 padded batch: its normalised boxes times (56, 40)
    are the absolute refined boxes; image 0 (no padding) divides by 64."""
    model = tiny().eval()
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[1, 40:] = True
    mask[1, :, 56:] = True
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), mask)
    absolute = box_convert(out["pred_boxes"], "cxcywh", "xyxy")
    torch.testing.assert_close(absolute[0] * 64, out["pred_boxes_refine"][0])
    torch.testing.assert_close(absolute[1] * torch.tensor([56.0, 40, 56, 40]), out["pred_boxes_refine"][1])
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \[B, H, W\] = \[2, 64, 64\]"):
        model(torch.randn(2, 3, 64, 64), mask[:, :32])


def test_bf16_autocast_on_the_cpu_runs_the_deformable_convolutions_in_float32() -> None:
    """torchvision's deform_conv2d has no bfloat16 CPU kernel (it raised "not implemented for
    'BFloat16'" under ``precision=bf16`` and ``amp=bf16``): in float32, the rest in bfloat16,
    the boxes stay near float32's, and a training step's backward goes through."""
    torch.manual_seed(0)
    model = tiny().eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(images)
    assert half["pred_logits"].dtype == torch.bfloat16  # the classifier did run in bfloat16
    scale = full["pred_boxes_refine"].abs().max()
    assert (half["pred_boxes_refine"].float() - full["pred_boxes_refine"]).abs().max() < 0.05 * scale
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images)
    sum(v.float().sum() for k, v in outputs.items() if k.startswith("pred")).backward()
    assert model.head.reg_refine_dconv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("refine", [True, False])
def test_every_parameter_receives_a_gradient(refine: bool) -> None:
    model = tiny(refine=refine)
    assert any(isinstance(m, DeformConv2d) for m in model.modules()) == refine
    outputs = model(torch.randn(2, 3, 64, 64))
    assert ("pred_boxes_refine" in outputs) == refine
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[4.0, 6, 30, 40], [30, 20, 60, 50]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[10.0, 10, 50, 34]])},
    ]
    criterion = model.build_criterion()
    losses = criterion(outputs, targets)
    assert set(losses) == ({"loss_cls", "loss_bbox", "loss_bbox_refine"} if refine else {"loss_cls", "loss_bbox"})
    sum(criterion.weight_dict[k] * v for k, v in losses.items()).backward()
    # Every parameter takes part (as DDP requires); a level's scale can get an exact zero when no
    # location of that level is positive and its star points fall outside the small feature map.
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert model.head.scales[0].scale.grad != 0 and model.head.cls_score.weight.grad.any()


def test_vfnet_r50_is_the_paper_configuration() -> None:
    model = create_model("vfnet_r50", num_classes=80)
    head = model.head
    assert head.strides == (8, 16, 32, 64, 128) and head.anchor_scale == 8.0 and head.gradient_mul == 0.1
    assert len(head.cls_tower) == len(head.reg_tower) == 3
    assert head.cls_tower[0][1].num_groups == 32 and head.cls_tower[0][0].out_channels == 256
    assert model.fpn.out_channels == 256 and model.fpn.upsample_mode == "nearest" and len(model.fpn.extra) == 2
    assert (model.score_threshold, model.iou_threshold, model.pre_nms_top_k, model.nms) == (0.05, 0.6, 1000, "nms")
    criterion = model.build_criterion()
    assert criterion.weight_dict == {"loss_cls": 1.0, "loss_bbox": 1.5, "loss_bbox_refine": 2.0}
    assert (criterion.cls_loss, criterion.alpha, criterion.gamma, criterion.topk) == ("varifocal", 0.75, 2.0, 9)
    # The classification bias starts every score at 0.01 (RetinaNet's prior).
    torch.testing.assert_close(head.cls_score.bias.sigmoid(), torch.full((80,), 0.01))
    # The stem and layer1 are frozen, as mmdetection's frozen_stages=1.
    frozen = {n.split(".")[1] for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "layer1"}
    assert tiny(cls_loss="focal").build_criterion().alpha == 0.25


def test_the_upsampling_mode_reaches_the_fpn() -> None:
    assert tiny(upsample="bilinear").fpn.upsample_mode == "bilinear"
    with pytest.raises(ValueError, match="cls_loss must be one of"):
        tiny(cls_loss="bce")
    with pytest.raises(ValueError, match="nms must be one of"):
        tiny(nms="soft")


def scores_to_logits(scores: torch.Tensor) -> torch.Tensor:
    return torch.logit(scores.clamp(1e-6, 1 - 1e-6))


def test_postprocess_by_hand() -> None:
    """Four locations, two classes, one 100 x 200 (h x w) image scaled to 50 x 100:
    - location 0, class 0 scores 0.9 and location 1 (the same box shifted by 1%) 0.8: NMS drops 1;
    - location 1, class 1 scores 0.7: another class, kept although its box overlaps;
    - location 2 scores 0.04 everywhere: under the 0.05 threshold;
    - location 3 (0.6) lies beyond the image's right edge: clipped to an empty box, dropped."""
    scores = torch.tensor([[[0.9, 0.01], [0.8, 0.7], [0.04, 0.04], [0.6, 0.01]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.51, 0.5, 0.2, 0.4], [0.2, 0.2, 0.1, 0.1], [1.2, 0.5, 0.2, 0.2]]])
    (found,) = vfnet_postprocess(scores_to_logits(scores), boxes, torch.tensor([[50, 100]]))
    torch.testing.assert_close(found["scores"], torch.tensor([0.9, 0.7]))
    assert found["labels"].tolist() == [0, 1]
    # cxcywh (0.5, 0.5, 0.2, 0.4) of a 100 x 50 (w x h) image: x 40..60, y 15..35.
    torch.testing.assert_close(found["boxes"], torch.tensor([[40.0, 15, 60, 35], [41, 15, 61, 35]]))
    (top1,) = vfnet_postprocess(scores_to_logits(scores), boxes, torch.tensor([[50, 100]]), top_k=1)
    assert top1["labels"].tolist() == [0]
    (strict,) = vfnet_postprocess(scores_to_logits(scores), boxes, torch.tensor([[50, 100]]), score_threshold=0.75)
    torch.testing.assert_close(strict["scores"], torch.tensor([0.9]))


def test_diou_nms_keeps_overlapping_boxes_whose_centres_are_apart() -> None:
    """Boxes [0, 0, 10, 10] and [5, 0, 15, 10]: IoU 1/3 (dropped at threshold 0.3), DIoU
    1/3 - 25/225 = 0.222 (kept)."""
    logits = scores_to_logits(torch.tensor([[[0.9], [0.8]]]))
    boxes = box_convert(torch.tensor([[[0.0, 0, 10, 10], [5, 0, 15, 10]]]) / 20, "xyxy", "cxcywh")
    sizes = torch.tensor([[20, 20]])
    assert len(vfnet_postprocess(logits, boxes, sizes, iou_threshold=0.3)[0]["scores"]) == 1
    assert len(vfnet_postprocess(logits, boxes, sizes, iou_threshold=0.3, nms="diou")[0]["scores"]) == 2


def test_postprocess_bad_input() -> None:
    logits, boxes = torch.zeros(1, 4, 2), torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match=r"pred_boxes must have shape \[B, N, 4\] = \[1, 4, 4\], got \(1, 3, 4\)"):
        vfnet_postprocess(logits, boxes[:, :3], torch.tensor([[8, 8]]))
    with pytest.raises(ValueError, match=r"image_sizes must have shape \[B, 2\]"):
        vfnet_postprocess(logits, boxes, torch.tensor([8, 8]))
    with pytest.raises(ValueError, match="nms must be one of"):
        vfnet_postprocess(logits, boxes, torch.tensor([[8, 8]]), nms="soft")


@pytest.mark.parametrize("refine", [True, False])
def test_criterion_weighs_exactly_the_losses_it_returns(refine: bool) -> None:
    """The engine refuses loss weights the criterion does not return: without refinement there
    is no ``loss_bbox_refine`` to weigh (``model_args='{refine: false}'`` must train)."""
    torch.manual_seed(0)
    model = create_model("vfnet_r18_tiny", num_classes=2, refine=refine)
    criterion = model.build_criterion()
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]])}]
    losses = criterion(model(torch.randn(1, 3, 64, 64)), targets)
    expected = {"loss_cls", "loss_bbox"} | ({"loss_bbox_refine"} if refine else set())
    assert set(criterion.weight_dict) == set(losses) == expected
