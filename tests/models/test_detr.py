"""Every registered model: forward, backward (every trainable parameter gets a gradient),
ONNX export with onnxruntime parity; and DETR's own behaviour."""

import pytest
import torch

from sightkit.losses import SetCriterion
from sightkit.models import DETR, build_detr, create_model, list_models
from tests.weights.peers import randomise

# The registry also holds other tasks' models (face embedders, ...), tested in their own files.
DETR_MODELS = [name for name in list_models() if name.startswith("detr")]

# Small inputs keep the ResNet-50 model fast; 96 x 64 still gives a 3 x 2 map at stride 32.
HEIGHT, WIDTH = 96, 64


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    mask = torch.zeros(2, HEIGHT, WIDTH, dtype=torch.bool)
    mask[1, 64:, :] = True
    mask[1, :, 32:] = True
    images[mask[:, None].expand_as(images)] = 0.0
    return images, mask


def flatten_outputs(outputs: dict) -> list[torch.Tensor]:
    flat = [outputs["pred_logits"], outputs["pred_boxes"]]
    for aux in outputs.get("aux_outputs", []):
        flat += [aux["pred_logits"], aux["pred_boxes"]]
    return flat


@pytest.mark.parametrize("name", DETR_MODELS)
def test_forward_and_backward(name: str) -> None:
    model = create_model(name, num_classes=3)
    images, mask = padded_batch()
    outputs = model(images, mask)
    layers = len(model.transformer.decoder_layers)
    queries = model.num_queries
    assert len(outputs["aux_outputs"]) == layers - 1
    for logits, boxes in zip(flatten_outputs(outputs)[::2], flatten_outputs(outputs)[1::2], strict=True):
        assert logits.shape == (2, queries, 4) and boxes.shape == (2, queries, 4)
        assert torch.isfinite(logits).all() and ((boxes > 0) & (boxes < 1)).all()
    # Every layer's outputs reach every trainable parameter (the heads are shared by all layers).
    loss = sum(t.square().mean() for t in flatten_outputs(outputs))
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    no_grad = {n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0}
    # As in the paper, the first decoder layer's self-attention sees all-zero content (the
    # queries enter as positions only), so every query attends to the same values: at
    # initialisation (zero attention biases) its weights, its output projection and the norm
    # after it get exactly zero gradient. Nothing else may.
    first_self_attention = {
        "transformer.decoder_layers.0.self_attn.in_proj_weight",
        "transformer.decoder_layers.0.self_attn.out_proj.weight",
        "transformer.decoder_layers.0.norm1.weight",
    }
    assert no_grad <= first_self_attention, f"parameters without gradient: {sorted(no_grad - first_self_attention)}"
    assert all(trainable[n].grad is not None for n in first_self_attention)
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(model.get_parameter(n).grad is None for n in frozen)


@pytest.mark.slow
@pytest.mark.parametrize("name", DETR_MODELS)
def test_onnx_export_matches_eager(name: str, tmp_path: object) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = create_model(name, num_classes=3).eval()
    images, mask = padded_batch()
    path = tmp_path / f"{name}.onnx"
    # optimize=False: the graph optimiser triples the export time and is not what parity is about.
    torch.onnx.export(model, (images, mask), path, dynamo=True, optimize=False, input_names=["images", "mask"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        expected = flatten_outputs(model(images, mask))
    assert len(got) == len(expected)
    for onnx_value, eager_value in zip(got, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(onnx_value), eager_value, atol=1e-4, rtol=1e-4)


def test_detr_r50_is_the_paper_configuration() -> None:
    """The same parameter count as transformers' DETR-ResNet-50 (an independent implementation of
    the paper), for COCO's 91 classes and 6+6 layers, d 256, FFN 2048, 100 queries."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DetrConfig(
        backbone_config=transformers.ResNetConfig(out_features=["stage4"]), num_labels=91, auxiliary_loss=True
    )
    reference = transformers.DetrForObjectDetection(config)
    model = create_model("detr_r50")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters()) == 41_524_768
    assert len(model.transformer.encoder_layers) == len(model.transformer.decoder_layers) == 6


def transformers_peer(model: DETR, auxiliary_loss: bool) -> torch.nn.Module:
    """transformers' DetrForObjectDetection with ``model``'s architecture and weights
    (benchmarks/detr_train_step.py copies them), in eval mode."""
    from benchmarks.detr_train_step import CONFIGS, build_peer

    peer = build_peer(CONFIGS["tiny"], model)
    peer.config.auxiliary_loss = auxiliary_loss  # one config object, read by the decoder at every call
    return peer.eval()


def test_equals_transformers_detr_with_the_same_weights() -> None:
    """transformers' DetrForObjectDetection given our weights computes the same outputs and loss,
    padding included, with every parameter and buffer random (fresh LayerNorms and frozen
    BatchNorm would hide a misplaced tensor). ``auxiliary_loss=False``: see the next test."""
    pytest.importorskip("transformers")
    model = create_model("detr_r18_tiny", num_classes=5, backbone_norm="frozen_bn", aux_loss=False)
    randomise(model.eval())
    peer = transformers_peer(model, auxiliary_loss=False)
    images, mask = padded_batch()
    targets = [
        {"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.4, 0.2]])},
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.6]])},
    ]
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    criterion = SetCriterion(5)
    with torch.no_grad():
        ours = model(images, mask)
        losses = criterion(ours, targets)
        theirs = peer(pixel_values=images, pixel_mask=(~mask).long(), labels=labels)
    torch.testing.assert_close(ours["pred_logits"], theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["pred_boxes"], theirs.pred_boxes, atol=1e-5, rtol=1e-5)
    assert theirs.logits.std() > 0.1  # random weights give outputs far from a constant
    # The same loss: 1 x CE (eos 0.1) + 5 x L1 + 2 x GIoU.
    total = sum(weight * losses[name] for name, weight in criterion.weight_dict.items())
    torch.testing.assert_close(total, theirs.loss, atol=1e-5, rtol=1e-5)


def test_transformers_auxiliary_loss_changes_the_decoder() -> None:
    """A known deviation of transformers (5.x): with ``auxiliary_loss=True`` its DetrDecoder feeds
    each layer the decoder-LayerNormed output of the previous one and normalises the last one
    twice, where DETR (and sightkit) normalise only the returned copies. The two agree only
    while every LayerNorm is at its initial (1, 0), where normalising a post-norm layer's output
    again changes almost nothing; with other values (as after training) they do not."""
    pytest.importorskip("transformers")
    model = create_model("detr_r18_tiny", num_classes=5, backbone_norm="frozen_bn").eval()
    randomise(model)
    images, mask = padded_batch()
    with torch.no_grad():
        ours = model(images, mask)["pred_logits"]
        theirs = transformers_peer(model, auxiliary_loss=True)(pixel_values=images, pixel_mask=(~mask).long()).logits
        assert (ours - theirs).abs().max() > 1e-2
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.reset_parameters()
        ours = model(images, mask)["pred_logits"]
        theirs = transformers_peer(model, auxiliary_loss=True)(pixel_values=images, pixel_mask=(~mask).long()).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_no_padding_mask_equals_an_all_false_mask() -> None:
    model = create_model("detr_r18_tiny", num_classes=3).eval()
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        without = model(images)
        with_mask = model(images, torch.zeros(2, HEIGHT, WIDTH, dtype=torch.bool))
    for a, b in zip(flatten_outputs(without), flatten_outputs(with_mask), strict=True):
        torch.testing.assert_close(a, b)


def test_the_padding_mask_reaches_the_transformer() -> None:
    model = create_model("detr_r18_tiny", num_classes=3).eval()
    images, mask = padded_batch()
    with torch.no_grad():
        masked = model(images, mask)["pred_boxes"]
        unmasked = model(images)["pred_boxes"]
    torch.testing.assert_close(masked[0], unmasked[0])  # image 0 has no padding
    assert not torch.allclose(masked[1], unmasked[1], atol=1e-4)


def test_without_aux_loss_the_final_prediction_is_unchanged() -> None:
    with_aux = build_detr(num_classes=3, backbone="resnet18", last_stage=2, d_model=32, nhead=2, dim_feedforward=64)
    without = build_detr(
        num_classes=3, backbone="resnet18", last_stage=2, d_model=32, nhead=2, dim_feedforward=64, aux_loss=False
    )
    without.load_state_dict(with_aux.state_dict())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = with_aux.eval()(images), without.eval()(images)
    assert "aux_outputs" not in b
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"])
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"])


def test_learned_position_encoding_trains_the_rows_and_columns_it_sees() -> None:
    model = build_detr(
        num_classes=2, backbone="resnet18", last_stage=3, d_model=32, nhead=2, position_encoding="learned"
    )
    model(torch.randn(1, 3, 64, 48))["pred_boxes"].sum().backward()  # a 4 x 3 feature map at stride 16
    row_grad = model.position_encoding.row_embed.weight.grad.abs().sum(-1)
    col_grad = model.position_encoding.col_embed.weight.grad.abs().sum(-1)
    assert (row_grad[:4] > 0).all() and (row_grad[4:] == 0).all()
    assert (col_grad[:3] > 0).all() and (col_grad[3:] == 0).all()


def test_bad_inputs_are_errors() -> None:
    model = create_model("detr_r18_tiny", num_classes=3)
    with pytest.raises(
        ValueError, match=r"images must be a float tensor of shape \[B, 3, H, W\], got .* \(3, 32, 32\)"
    ):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"images must be a float tensor .* got torch.uint8"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \[B, H, W\] = \[1, 32, 32\]"):
        model(torch.randn(1, 3, 32, 32), torch.zeros(1, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="position_encoding must be one of"):
        build_detr(position_encoding="rope")
    with pytest.raises(ValueError, match="num_classes and num_queries must be >= 1, got 0 and 100"):
        DETR(torch.nn.Identity(), None, num_classes=0)
