"""Pose models: every registered pose model's forward, backward (every parameter gets a
gradient) and ONNX export; the paper configurations; the heatmap head's upsampling modes;
pose_postprocess by hand and with the flip test."""

import pytest
import torch

from sightkit.data import COCO_KEYPOINT_NAMES, keypoint_flip_pairs
from sightkit.losses import rle_loss
from sightkit.models import HeatmapPose, RLEPose, build_pose, create_model, list_models, pose_postprocess
from sightkit.models.backbones import build_backbone
from sightkit.ops import flip_heatmaps, flip_keypoints, render_heatmaps

POSE_MODELS = [name for name in list_models() if name.startswith(("rle_", "regress_", "heatmap_"))]
TINY = [name for name in POSE_MODELS if name.endswith("_tiny")]
FLIP_PAIRS = keypoint_flip_pairs(COCO_KEYPOINT_NAMES)
HEIGHT, WIDTH = 64, 48


def model_loss(model: torch.nn.Module, outputs: dict) -> torch.Tensor:
    """A loss that involves every output (and, for RLE, the flow)."""
    if isinstance(model, RLEPose):
        target = torch.rand_like(outputs["coords"]) - 0.5
        return rle_loss(outputs["coords"], outputs["sigma"], target, model.flow)
    return sum(value.square().mean() for value in outputs.values())


def test_the_pose_models_are_registered() -> None:
    expected = {"rle_r50", "heatmap_r50", "regress_r50", "rle_r18_tiny", "heatmap_r18_tiny", "regress_r18_tiny"}
    assert set(POSE_MODELS) == expected


@pytest.mark.parametrize("name", TINY)
def test_forward_and_backward(name: str) -> None:
    model = create_model(name, num_keypoints=5)
    outputs = model(torch.randn(2, 3, HEIGHT, WIDTH))
    if model.kind == "heatmap":
        assert set(outputs) == {"heatmaps"}
        assert outputs["heatmaps"].shape == (2, 5, HEIGHT // model.stride, WIDTH // model.stride)
        assert model.stride == 2
    else:
        assert outputs["coords"].shape == (2, 5, 2)
        # The official initialisation: every keypoint starts near the crop's centre.
        assert outputs["coords"].abs().max() < 0.05
        if model.kind == "rle":
            assert outputs["sigma"].shape == (2, 5, 2)
            assert ((outputs["sigma"] > 0) & (outputs["sigma"] < 1)).all()
    model_loss(model, outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_paper_configurations() -> None:
    """SimpleBaseline-ResNet-50 has 34.0 M parameters (Xiao et al., Table 1); RLE is ResNet-50
    (23.5 M without its classifier) plus a 2048 -> 17 x 4 head and the 6-layer flow."""
    heatmap = create_model("heatmap_r50")
    assert round(sum(p.numel() for p in heatmap.parameters()) / 1e6, 1) == 34.0
    assert heatmap.stride == 4 and len(heatmap.upsample) == 3
    rle = create_model("rle_r50")
    resnet = build_backbone("resnet50", 4, trainable_stages=5, norm="bn")
    flow = 12 * (2 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2)
    head = 2 * (2048 * 34 + 34)
    assert sum(p.numel() for p in rle.parameters()) == sum(p.numel() for p in resnet.parameters()) + head + flow


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "pixelshuffle", "deconv", "carafe"])
def test_every_upsampling_mode_gives_the_same_heatmap_size(mode: str) -> None:
    model = build_pose("heatmap", 3, backbone="resnet18", last_stage=3, channels=16, upsample=mode)
    assert model(torch.randn(1, 3, HEIGHT, WIDTH))["heatmaps"].shape == (1, 3, HEIGHT // 2, WIDTH // 2)


def test_unpool_and_bad_kinds_are_refused() -> None:
    backbone = build_backbone("resnet18", 3, trainable_stages=4, norm="bn")
    with pytest.raises(ValueError, match=r"upsample must be one of .*got 'unpool'"):
        HeatmapPose(backbone, upsample="unpool")
    with pytest.raises(ValueError, match="5 x2 stages do not divide the backbone's stride 16"):
        HeatmapPose(backbone, stages=5)
    with pytest.raises(ValueError, match="kind must be one of"):
        build_pose("dark")


def test_postprocess_heatmaps_to_crop_pixels() -> None:
    points = torch.tensor([[[10.3, 20.7], [40.1, 3.2]]])  # crop pixels of a 64 x 48 crop
    heatmaps = render_heatmaps(points / 2, (32, 24), sigma=2.0)  # stride 2
    found, scores = pose_postprocess({"heatmaps": heatmaps}, (HEIGHT, WIDTH))
    torch.testing.assert_close(found, points, atol=2e-3, rtol=0)
    assert (scores > 0.88).all()


def test_postprocess_coordinates_and_sigma() -> None:
    coords = torch.tensor([[[0.0, 0.0], [-0.5, 0.25]]])
    sigma = torch.tensor([[[0.1, 0.3], [0.5, 0.5]]])
    points, scores = pose_postprocess({"coords": coords, "sigma": sigma}, (HEIGHT, WIDTH))
    torch.testing.assert_close(points, torch.tensor([[[24.0, 32.0], [0.0, 48.0]]]))
    torch.testing.assert_close(scores, torch.tensor([[0.8, 0.5]]))
    _, plain = pose_postprocess({"coords": coords}, (HEIGHT, WIDTH))
    assert plain.tolist() == [[1.0, 1.0]]


def test_flip_test_of_a_mirror_image_changes_nothing() -> None:
    """Outputs on the flipped crop that are exactly the mirror of the outputs on the crop
    average to the outputs themselves; so the flip-back must be exact."""
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(2, 17, 2, generator=g) - 0.5
    sigma = torch.rand(2, 17, 2, generator=g)
    mirrored = {
        "coords": flip_keypoints(coords, 0.0, FLIP_PAIRS),
        "sigma": flip_keypoints(sigma, 0.0, FLIP_PAIRS).abs(),
    }
    plain = pose_postprocess({"coords": coords, "sigma": sigma}, (HEIGHT, WIDTH))
    flipped = pose_postprocess({"coords": coords, "sigma": sigma}, (HEIGHT, WIDTH), mirrored, FLIP_PAIRS)
    for a, b in zip(plain, flipped, strict=True):
        torch.testing.assert_close(a, b)
    heatmaps = render_heatmaps(torch.rand(2, 17, 2, generator=g) * 20 + 2, (32, 24))
    plain = pose_postprocess({"heatmaps": heatmaps}, (HEIGHT, WIDTH))
    flipped = pose_postprocess(
        {"heatmaps": heatmaps}, (HEIGHT, WIDTH), {"heatmaps": flip_heatmaps(heatmaps, FLIP_PAIRS)}, FLIP_PAIRS
    )
    for a, b in zip(plain, flipped, strict=True):
        torch.testing.assert_close(a, b)


def test_postprocess_errors() -> None:
    with pytest.raises(ValueError, match="outputs must hold 'heatmaps' or 'coords', got keys \\['logits'\\]"):
        pose_postprocess({"logits": torch.zeros(1)}, (HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="decode must be one of"):
        pose_postprocess({"coords": torch.zeros(1, 2, 2)}, (HEIGHT, WIDTH), decode="dark")


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_onnx_export_matches_eager(name: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = create_model(name).eval()
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (images,), path, dynamo=True, optimize=False, input_names=["images"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = list(model(images).values())
    assert len(got) == len(expected)
    for onnx_value, eager_value in zip(got, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(onnx_value), eager_value, atol=1e-4, rtol=1e-4)
