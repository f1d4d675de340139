"""DINO: forward and backward (every parameter learns, with and without targets), the outputs'
structure in training and evaluation, padding, query selection, the sigmoid postprocess, the
multi-scale backbone and the published configuration."""

from pathlib import Path

import pytest
import torch
from gloo_launch import launch

from sightkit.models import DINO, MultiScaleBackbone, build_backbone, create_model, dino_postprocess
from sightkit.models.dino import box_sine_embedding, inverse_sigmoid

NUM_CLASSES = 4


def tiny(**overrides: object) -> DINO:
    return create_model("dino_r18_tiny", num_classes=NUM_CLASSES, **overrides)


def targets_of(*counts: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(sum(counts))
    return [
        {
            "labels": torch.randint(0, NUM_CLASSES, (n,), generator=generator),
            "boxes": torch.cat([torch.rand(n, 2, generator=generator) * 0.5 + 0.25, torch.full((n, 2), 0.2)], 1),
        }
        for n in counts
    ]


def train_step(model: DINO, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
    criterion = model.build_criterion()
    losses = criterion(model(images, targets=targets), targets)
    assert set(losses) == set(criterion.weight_dict)
    total = sum(weight * losses[name] for name, weight in criterion.weight_dict.items())
    total.backward()
    return losses


@pytest.mark.parametrize("counts", [(2, 3), (0, 2), (0, 0)], ids=["targets", "an image without", "no targets"])
def test_every_parameter_learns_whatever_the_targets(counts: tuple[int, ...]) -> None:
    """Under DDP every process must use every parameter in every step, or the gradient
    all-reduce waits for ever: a batch without targets still runs the denoising queries
    (one group of padding) and every loss keeps its graph."""
    model = tiny().train()
    losses = train_step(model, torch.randn(2, 3, 64, 64), targets_of(*counts))
    assert all(torch.isfinite(value) for value in losses.values())
    if sum(counts) == 0:
        assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0 and losses["loss_vfl"] > 0
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # The padding label's embedding stays zero and gets no gradient; the real labels' rows learn.
    embedding = model.denoising_embed.weight
    assert embedding.grad[NUM_CLASSES].abs().sum() == 0 and embedding[NUM_CLASSES].abs().sum() == 0
    if sum(counts):
        assert embedding.grad[:NUM_CLASSES].abs().sum() > 0


def test_outputs_in_training_and_evaluation() -> None:
    model = tiny(num_queries=6, num_denoising=8)
    images = torch.randn(2, 3, 64, 96)
    targets = targets_of(2, 4)
    outputs = model.train()(images, targets=targets)
    meta = outputs["dn_meta"]
    assert (meta.num_groups, meta.group_size) == (2, 8)  # 8 // 4 groups of 4 positives + 4 negatives
    assert outputs["pred_logits"].shape == (2, 6, NUM_CLASSES) and outputs["pred_boxes"].shape == (2, 6, 4)
    assert len(outputs["aux_outputs"]) == 2 and len(outputs["dn_outputs"]) == 3
    assert outputs["dn_outputs"][0]["pred_boxes"].shape == (2, 16, 4)
    assert outputs["enc_outputs"]["pred_logits"].shape == (2, 6, NUM_CLASSES)
    with torch.no_grad():
        evaluated = model.eval()(images, targets=targets)  # evaluation ignores the targets
    assert "dn_outputs" not in evaluated and evaluated["pred_boxes"].shape == (2, 6, 4)
    boxes = [evaluated["pred_boxes"], *(a["pred_boxes"] for a in evaluated["aux_outputs"])]
    assert all(((b > 0) & (b < 1)).all() for b in boxes)
    # The criterion's names do not depend on the mode: the denoising losses are zero.
    losses = model.build_criterion()(evaluated, targets)
    assert losses["loss_vfl_dn_2"] == 0 and losses["loss_vfl"] > 0


def test_initial_boxes_are_the_selected_proposals() -> None:
    """The box heads start at zero, so every decoder layer returns its reference box, and the
    first reference is the selected encoder proposal: the decoder starts where the encoder ends."""
    model = tiny(num_queries=5).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    proposals = outputs["enc_outputs"]["pred_boxes"]
    for layer in [outputs, *outputs["aux_outputs"]]:
        torch.testing.assert_close(layer["pred_boxes"], proposals, atol=1e-5, rtol=1e-5)
    # Anchors: sides 0.05 * 2^level at the token centres (the encoder box head is zero too).
    sides = proposals[0, :, 2]
    assert set(torch.round(sides * 100).long().tolist()) <= {5, 10, 20}


def test_proposals_box_only_the_selected_tokens_as_boxing_all_would() -> None:
    """The encoder's box head runs on the selected tokens only: the proposals equal the box head
    applied to every token, plus its anchor, then selected by the best class logit (a padded
    batch, trained-looking heads rather than the zero initial box head)."""
    model = tiny(num_queries=8).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in [*model.enc_box_head.parameters(), *model.enc_class_head.parameters()]:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        images, mask = torch.randn(2, 3, 64, 96, generator=generator), torch.zeros(2, 64, 96, dtype=torch.bool)
        mask[1, :, 64:] = True
        outputs = model(images, mask)
        memory, padding, shapes, valid_ratios = model._encode(images, mask)
        features, anchors = model._propose(memory, padding, shapes, valid_ratios)
        scores = model.enc_class_head(features).max(-1).values.masked_fill(padding, float("-inf"))
        top = scores.topk(8, dim=1).indices
        every_box = model.enc_box_head(features) + anchors
        expected = torch.stack([every_box[b, top[b]] for b in range(2)]).sigmoid()
    torch.testing.assert_close(outputs["enc_outputs"]["pred_boxes"], expected, atol=1e-6, rtol=1e-5)
    assert (expected[..., 2:] - expected[..., 2:].mean()).abs().max() > 0.01  # the head moved the anchors


def test_no_padding_mask_equals_an_all_false_mask() -> None:
    model = tiny().eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        without = model(images)
        with_mask = model(images, torch.zeros(2, 64, 64, dtype=torch.bool))
    torch.testing.assert_close(without["pred_logits"], with_mask["pred_logits"])
    torch.testing.assert_close(without["pred_boxes"], with_mask["pred_boxes"])


def test_padding_neither_changes_the_other_image_nor_gives_proposals() -> None:
    """Image 1 (64 x 64) padded to 96 x 128 next to a larger image: image 0 detects as it does
    alone, and image 1's proposals never come from its padding."""
    model = tiny(num_queries=8).eval()
    big, small = torch.randn(1, 3, 96, 128), torch.randn(1, 3, 64, 64)
    images = torch.zeros(2, 3, 96, 128)
    images[0], images[1, :, :64, :64] = big[0], small[0]
    mask = torch.ones(2, 96, 128, dtype=torch.bool)
    mask[0] = False
    mask[1, :64, :64] = False
    with torch.no_grad():
        batched = model(images, mask)
        alone = model(big)
    torch.testing.assert_close(batched["pred_boxes"][0], alone["pred_boxes"][0], atol=1e-5, rtol=1e-5)
    # Every proposal of image 1 sits inside its own region (centres in [0, 1] of its size).
    centres = batched["enc_outputs"]["pred_boxes"][1, :, :2]
    assert ((centres > 0) & (centres < 1)).all()


def test_too_few_tokens_for_the_queries_is_an_error() -> None:
    with pytest.raises(ValueError, match="gives 21 encoder tokens, fewer than num_queries = 30"):
        tiny()(torch.randn(1, 3, 32, 32))  # 4x4 + 2x2 + 1x1 tokens


def test_inverse_sigmoid_and_box_embedding() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(inverse_sigmoid(x)[1:3], torch.tensor([-torch.log(torch.tensor(3.0)), 0.0]))
    assert torch.isfinite(inverse_sigmoid(x)).all()
    embedded = box_sine_embedding(torch.tensor([[0.25, 0.5, 0.1, 0.2]]), num_pos_feats=4)
    # cy first: sin(2 pi 0.5), cos(2 pi 0.5), sin(2 pi 0.5 / 100), cos(...), then cx, w, h.
    angle = torch.tensor(2 * torch.pi * 0.5)
    expected = torch.tensor([angle.sin(), angle.cos(), (angle / 100).sin(), (angle / 100).cos()])
    torch.testing.assert_close(embedded[0, :4], expected)
    assert embedded.shape == (1, 16)


def test_postprocess_takes_the_top_k_over_queries_and_classes() -> None:
    logits = torch.tensor([[[2.0, -1.0, 0.5], [-3.0, 1.0, 1.5]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    (found,) = dino_postprocess(logits, boxes, torch.tensor([[100, 200]]), top_k=3)
    torch.testing.assert_close(found["scores"], torch.tensor([2.0, 1.5, 1.0]).sigmoid())
    assert found["labels"].tolist() == [0, 2, 1]
    # Query 0 in a 200-wide, 100-high image: centre (100, 50), size (40, 40); query 1 twice.
    torch.testing.assert_close(found["boxes"][0], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    torch.testing.assert_close(found["boxes"][1], torch.tensor([0.0, 50.0, 100.0, 100.0]))
    torch.testing.assert_close(found["boxes"][2], found["boxes"][1])
    (kept,) = dino_postprocess(logits, boxes, torch.tensor([[100, 200]]), top_k=6, score_threshold=0.6)
    assert kept["labels"].tolist() == [0, 2, 1, 2]
    with pytest.raises(ValueError, match=r"pred_boxes must have shape \[B, Q, 4\] = \[1, 2, 4\]"):
        dino_postprocess(logits, boxes[:, :1], torch.tensor([[1, 1]]))


def test_multiscale_backbone_returns_the_stages_it_names() -> None:
    resnet = build_backbone("resnet18", last_stage=3, trainable_stages=4, norm="bn").eval()
    backbone = MultiScaleBackbone(resnet, (2, 3))
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        c8, c16 = backbone(images)
        x = resnet.body.layer1(resnet.body.stem(images))
        expected8 = resnet.body.layer2(x)
    torch.testing.assert_close(c8, expected8)
    torch.testing.assert_close(c16, resnet(images))
    assert backbone.channels == [128, 256] and backbone.strides == [8, 16]
    assert c8.shape[-2:] == (8, 12) and c16.shape[-2:] == (4, 6)
    with pytest.raises(ValueError, match=r"stages must be increasing ResNet stages in \[1, 3\].*got \(2, 4\)"):
        MultiScaleBackbone(resnet, (2, 4))


def test_dino_r50_is_the_dino_4scale_configuration() -> None:
    model = create_model("dino_r50")
    assert model.backbone.strides == [8, 16, 32] and len(model.input_proj) == 4
    assert len(model.encoder_layers) == len(model.decoder_layers) == 6
    assert model.num_queries == 900 and model.num_denoising == 100 and model.d_model == 256
    attention = model.decoder_layers[0].cross_attn
    assert (attention.n_heads, attention.n_levels, attention.n_points) == (8, 4, 4)
    assert model.encoder_layers[0].ffn.linear1.out_features == 2048
    # ResNet-50 with layer2-4 trained (frozen BN), as DETR and DINO train their backbone.
    trainable = {name.split(".")[1] for name, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}


@pytest.mark.slow
def test_ddp_with_a_rank_without_targets_trains_without_hanging(tmp_path: Path) -> None:
    """Two gloo processes, rank 1 never has a target: both finish their steps (a timeout would
    mean a hang) and hold the same parameters, so every gradient was all-reduced."""
    launch(Path(__file__).parent / "dino_ddp_worker.py", tmp_path)
    rank0, rank1 = torch.load(tmp_path / "params.pt")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], msg=f"{name} differs between ranks")
