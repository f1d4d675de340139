"""sightkit.engine.precision: the inference precision contexts."""

import copy

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from sightkit.engine import precision
from sightkit.engine.precision import (
    PRECISIONS,
    _fold_batch_norms,
    _PackedConv2d,
    autocast_context,
    check_precision,
    prepare_for_inference,
)


def test_fp32_is_a_null_context() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with autocast_context("fp32", "cpu"):
        product = a @ b
    assert product.dtype == torch.float32
    torch.testing.assert_close(product, a @ b, rtol=0, atol=0)


def test_bf16_multiplies_bfloat16_inputs_on_the_cpu() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 64, generator=generator), torch.randn(64, 16, generator=generator)
    with autocast_context("bf16", torch.device("cpu")):
        product = a @ b
    assert product.dtype == torch.bfloat16
    # the same product of the inputs rounded to bfloat16 (float32 accumulation), then rounded
    expected = (a.bfloat16().float() @ b.bfloat16().float()).bfloat16()
    torch.testing.assert_close(product, expected, rtol=1e-2, atol=1e-2)
    # and not the float32 product: the inputs lost mantissa bits
    assert not torch.equal(product.float(), a @ b)


def test_bf16_leaves_the_context_behind() -> None:
    with autocast_context("bf16", "cpu"):
        pass
    assert (torch.randn(2, 3) @ torch.randn(3, 2)).dtype == torch.float32


def test_check_precision() -> None:
    assert [check_precision(p) for p in PRECISIONS] == ["fp32", "bf16"]
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        check_precision("fp16")
    with pytest.raises(ValueError, match=r"precision must be one of .* got 'BF16'"):
        autocast_context("BF16", "cpu")
    with pytest.raises(ValueError, match=r"precision 'bf16' needs device 'cpu' or 'cuda', got 'meta'"):
        autocast_context("bf16", "meta")


def small_network() -> torch.nn.Module:
    """Convolution, BatchNorm, pooling and a linear head, with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_prepare_for_inference_at_fp32_is_the_model_itself() -> None:
    model = small_network()
    assert prepare_for_inference(model, "fp32") is model
    with pytest.raises(ValueError, match=r"precision must be one of .* got 'fp16'"):
        prepare_for_inference(model, "fp16")


def test_prepare_for_inference_at_bf16_computes_what_autocast_computes_on_the_model() -> None:
    model = small_network()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    prepared = prepare_for_inference(model, "bf16")
    # the model itself is left as it was: float32, contiguous, the same values, its BatchNorm in place
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == before[name].dtype and tensor.is_contiguous(), name
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)
    assert isinstance(model[1], torch.nn.BatchNorm2d)
    # the copy: the BatchNorm folded into the convolution before it, channels-last bfloat16
    # convolution weights, bfloat16 linear weights and biases (autocast casts them anyway)
    assert isinstance(prepared[1], torch.nn.Identity)
    assert prepared[0].weight.dtype == prepared[4].weight.dtype == prepared[7].weight.dtype == torch.bfloat16
    assert prepared[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert prepared[0].bias.dtype == prepared[7].bias.dtype == torch.bfloat16
    assert not prepared.training
    images = torch.rand(4, 3, 16, 16)
    with torch.inference_mode(), autocast_context("bf16", "cpu"):
        expected, got = model(images), prepared(images)
    with torch.inference_mode():
        full = model(images)
    # Autocast rounds the weights to bfloat16, the copy rounds the folded weights: both carry
    # bfloat16's relative error (2^-9) on weights of the same size, so their errors against
    # float32 are of the same size, and they stay close to each other.
    assert got.dtype == expected.dtype == torch.bfloat16
    bf16_error, copy_error = (expected.float() - full).abs().max(), (got.float() - full).abs().max()
    assert bf16_error > 0
    assert copy_error <= 2 * bf16_error
    assert (got.float() - expected.float()).abs().max() <= 2 * bf16_error


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_fold_batch_norms_keeps_a_resnet_s_float32_outputs(norm: str) -> None:
    # every BatchNorm of a torchvision ResNet-18 (stem, blocks, downsampling shortcuts) follows a
    # convolution: all 20 fold, and the network computes the same function
    torch.manual_seed(0)
    layer = torch.nn.BatchNorm2d if norm == "bn" else FrozenBatchNorm2d
    model = torchvision.models.resnet18(weights=None, norm_layer=layer).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | FrozenBatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    folded = copy.deepcopy(model)
    _fold_batch_norms(folded)
    norms = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d | FrozenBatchNorm2d)]
    assert norms == [] and sum(isinstance(m, torch.nn.Identity) for m in folded.modules()) == 20
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-4, atol=1e-4)


def test_fold_batch_norms_leaves_norms_it_cannot_fold() -> None:
    batch_statistics = torch.nn.BatchNorm2d(4, track_running_stats=False)  # normalises with the batch's own
    after_relu = torch.nn.BatchNorm2d(4)  # follows no convolution
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), batch_statistics, torch.nn.ReLU(), after_relu).eval()
    _fold_batch_norms(model)
    assert model[1] is batch_statistics and model[3] is after_relu


def test_prepare_for_inference_at_bf16_runs_group_norm_on_contiguous_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    prepared = prepare_for_inference(model, "bf16")
    images = torch.rand(2, 3, 10, 10)
    group_norm, seen = torch.nn.functional.group_norm, []

    def recording(input: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(input.is_contiguous())
        return group_norm(input, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "group_norm", recording)
    with torch.inference_mode(), autocast_context("bf16", "cpu"):
        activations = prepared[0](images)
        expected = model[1](activations)  # the same norm on the channels-last activations
        got = prepared[1](activations)
    assert activations.is_contiguous(memory_format=torch.channels_last) and not activations.is_contiguous()
    assert seen == [False, True]  # the kernel got the copy's input contiguous
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_prepare_for_inference_leaves_a_model_without_layers_to_cast() -> None:
    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.LayerNorm(4))
    assert prepare_for_inference(model, "bf16") is model


class ProjectedAttention(torch.nn.Module):
    """A linear layer, then self-attention over its outputs (as a DETR encoder layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 16)
        self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        return self.attn(y + 1, y + 1, y)[0]


def test_prepare_for_inference_at_bf16_casts_attention_weights_once() -> None:
    torch.manual_seed(0)
    model = ProjectedAttention().eval()
    prepared = prepare_for_inference(model, "bf16")
    # the packed input projection is a bare parameter, not a Linear layer: cast as well
    assert prepared.proj.weight.dtype == prepared.attn.in_proj_weight.dtype == torch.bfloat16
    assert prepared.attn.in_proj_bias.dtype == prepared.attn.out_proj.weight.dtype == torch.bfloat16
    assert model.attn.in_proj_weight.dtype == torch.float32
    x = torch.randn(2, 5, 8)
    with torch.inference_mode():
        with autocast_context("bf16", "cpu"):
            expected, got = model(x), prepared(x)
        full = model(x)
    # autocast rounds the same weights to bfloat16 on every call: the same numbers up to summation order
    assert got.dtype == expected.dtype == torch.bfloat16
    bf16_error = (expected.float() - full).abs().max()
    assert bf16_error > 0
    assert (got.float() - expected.float()).abs().max() <= 0.25 * bf16_error


@pytest.mark.skipif(not precision._packed_convolutions_work(), reason="this PyTorch has no oneDNN packed convolution")
def test_prepare_for_inference_at_bf16_packs_convolution_weights_once_per_input_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    prepared = prepare_for_inference(model, "bf16")
    packed = [m for m in prepared.modules() if isinstance(m, _PackedConv2d)]
    assert len(packed) == 20  # the stem, 16 in the blocks, 3 downsampling shortcuts
    monkeypatch.setattr(precision, "_packed_convolutions_work", lambda: False)
    plain = prepare_for_inference(model, "bf16")
    assert not any(isinstance(m, _PackedConv2d) for m in plain.modules())
    images = torch.rand(2, 3, 64, 96)
    with torch.inference_mode(), autocast_context("bf16", "cpu"):
        got, expected = prepared(images), plain(images)
        first = [m._packed for m in packed]
        assert packed[0]._packed[0] == (2, 3, 64, 96)
        prepared(images)  # the same shape: the same packed weights
        assert all(m._packed[1] is kept[1] for m, kept in zip(packed, first, strict=True))
        smaller = torch.rand(1, 3, 32, 32)
        torch.testing.assert_close(prepared(smaller), plain(smaller), rtol=0.02, atol=0.02)
        assert all(m._packed[1] is not kept[1] for m, kept in zip(packed, first, strict=True))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0.02)
    # oneDNN's packed tensors have no storage: copies and saves leave them out and pack again
    again = copy.deepcopy(prepared)
    with torch.inference_mode(), autocast_context("bf16", "cpu"):
        torch.testing.assert_close(again(images), got, rtol=0, atol=0)


class _WithHeads(torch.nn.Module):
    float32_heads = ("box", "classes")

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(8, 8)
        self.box = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        self.classes = torch.nn.ModuleList(torch.nn.Linear(8, 3) for _ in range(2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.body(x)
        return (self.box(features), *(head(features) for head in self.classes))


def test_prepare_for_inference_at_bf16_keeps_the_named_heads_in_float32() -> None:
    torch.manual_seed(0)
    model = _WithHeads().eval()
    prepared = prepare_for_inference(model, "bf16")
    assert prepared.body.weight.dtype == torch.bfloat16
    # the heads: the model's float32 weights, unrounded, and float32 results under autocast
    torch.testing.assert_close(prepared.box.head[2].weight, model.box[2].weight, rtol=0, atol=0)
    torch.testing.assert_close(prepared.classes[1].head.weight, model.classes[1].weight, rtol=0, atol=0)
    x = torch.randn(5, 8)
    with torch.inference_mode(), autocast_context("bf16", "cpu"):
        boxes, *scores = prepared(x)
        features = prepared.body(x)
    assert boxes.dtype == scores[0].dtype == torch.float32 and features.dtype == torch.bfloat16
    # exactly the float32 heads on the bfloat16 features
    with torch.inference_mode():
        torch.testing.assert_close(boxes, model.box(features.float()), rtol=0, atol=0)
        torch.testing.assert_close(scores[1], model.classes[1](features.float()), rtol=0, atol=0)


def test_detr_boxes_at_bf16_come_from_a_float32_head() -> None:
    from sightkit.models import create_model

    torch.manual_seed(0)
    model = create_model("detr_r18_tiny", num_classes=3).eval()
    prepared = prepare_for_inference(model, "bf16")
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode(), autocast_context("bf16", "cpu"):
        boxes = prepared(images)["pred_boxes"]
    # a bfloat16 head gave bfloat16 boxes; the float32 one's are almost never on bfloat16's grid
    assert boxes.dtype == torch.float32
    assert (boxes == boxes.bfloat16().float()).float().mean() < 0.1


class _WithConvolutionHead(torch.nn.Module):
    float32_heads = ("head",)

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_float32_head_s_convolutions_are_neither_cast_nor_packed() -> None:
    torch.manual_seed(0)
    model = _WithConvolutionHead().eval()
    prepared = prepare_for_inference(model, "bf16")
    assert type(prepared.head.head) is torch.nn.Conv2d and prepared.head.head.weight.dtype == torch.float32
    x = torch.randn(2, 3, 9, 11)
    with torch.inference_mode(), autocast_context("bf16", "cpu"):
        got, features = prepared(x), prepared.body(x)
    with torch.inference_mode():
        torch.testing.assert_close(got, model.head(features.float()), rtol=0, atol=0)
