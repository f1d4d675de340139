"""sightkit.engine.precision: the inference precision contexts."""

import pytest
import torch

from sightkit.engine.precision import PRECISIONS, autocast_context, check_precision


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
