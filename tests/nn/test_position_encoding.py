"""Sine position encoding against its formula evaluated by hand, its padding behaviour, and
the learned embedding's lookup."""

import math

import pytest
import torch

from sightkit.nn import PositionEmbeddingLearned, PositionEmbeddingSine, sine_position_encoding


def formula(position: float, size: int, channel: int, feats: int, temperature: float = 10000.0) -> float:
    """Channel ``channel`` of one axis for a 1-based ``position`` along a valid extent of ``size``."""
    p = position / (size + 1e-6) * 2 * math.pi
    angle = p / temperature ** (2 * (channel // 2) / feats)
    return math.sin(angle) if channel % 2 == 0 else math.cos(angle)


def test_sine_matches_the_formula_with_padding() -> None:
    feats = 6
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, 3:, :] = True  # image 1: 3 valid rows
    mask[1, :, 4:] = True  # and 4 valid columns
    pos = sine_position_encoding(mask, num_pos_feats=feats)
    assert pos.shape == (2, 2 * feats, 5, 7)
    for b, (height, width) in enumerate([(5, 7), (3, 4)]):
        for row in range(height):
            for col in range(width):
                for c in range(feats):
                    expected_y = formula(row + 1, height, c, feats)
                    expected_x = formula(col + 1, width, c, feats)
                    assert pos[b, c, row, col].item() == pytest.approx(expected_y, abs=1e-5)
                    assert pos[b, feats + c, row, col].item() == pytest.approx(expected_x, abs=1e-5)


def test_sine_unnormalised_uses_pixel_counts() -> None:
    mask = torch.zeros(1, 2, 3, dtype=torch.bool)
    pos = sine_position_encoding(mask, num_pos_feats=2, normalize=False, temperature=100.0)
    # channels: y sin, y cos (both at wavelength 1), x sin, x cos; positions are 1-based.
    assert pos[0, :, 1, 2].tolist() == pytest.approx([math.sin(2), math.cos(2), math.sin(3), math.cos(3)], abs=1e-6)


def test_sine_valid_region_does_not_depend_on_padding() -> None:
    small = sine_position_encoding(torch.zeros(1, 4, 6, dtype=torch.bool))
    padded_mask = torch.ones(1, 9, 11, dtype=torch.bool)
    padded_mask[0, :4, :6] = False
    padded = sine_position_encoding(padded_mask)
    torch.testing.assert_close(padded[..., :4, :6], small)


def test_sine_module_equals_function() -> None:
    mask = torch.rand(2, 6, 5) > 0.7
    module = PositionEmbeddingSine(num_pos_feats=8, temperature=20.0, normalize=True, scale=3.0)
    torch.testing.assert_close(module(mask), sine_position_encoding(mask, 8, 20.0, True, 3.0))


@pytest.mark.parametrize("feats", [0, 3, -2])
def test_sine_rejects_odd_or_non_positive_feats(feats: int) -> None:
    with pytest.raises(ValueError, match="num_pos_feats must be a positive even number"):
        sine_position_encoding(torch.zeros(1, 2, 2, dtype=torch.bool), num_pos_feats=feats)
    with pytest.raises(ValueError, match="num_pos_feats must be a positive even number"):
        PositionEmbeddingSine(num_pos_feats=feats)


@pytest.mark.parametrize("mask", [torch.zeros(2, 3), torch.zeros(1, 2, 2)])
def test_position_encodings_reject_bad_masks(mask: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \[B, H, W\]"):
        sine_position_encoding(mask)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \[B, H, W\]"):
        PositionEmbeddingLearned(4)(mask)


def test_learned_concatenates_row_and_column_embeddings() -> None:
    module = PositionEmbeddingLearned(num_pos_feats=3, max_size=10)
    pos = module(torch.zeros(2, 4, 5, dtype=torch.bool))
    assert pos.shape == (2, 6, 4, 5)
    for row, col in [(0, 0), (3, 1), (2, 4)]:
        torch.testing.assert_close(pos[1, :3, row, col], module.row_embed.weight[row])
        torch.testing.assert_close(pos[1, 3:, row, col], module.col_embed.weight[col])
    pos.sum().backward()
    # Rows 0-3 and columns 0-4 are used, each once per image and per column (row) of the map.
    assert module.row_embed.weight.grad[:4].eq(2 * 5).all() and module.row_embed.weight.grad[4:].eq(0).all()
    assert module.col_embed.weight.grad[:5].eq(2 * 4).all() and module.col_embed.weight.grad[5:].eq(0).all()


def test_learned_rejects_maps_larger_than_max_size() -> None:
    with pytest.raises(ValueError, match="exceeds the learned embedding's max_size=4"):
        PositionEmbeddingLearned(2, max_size=4)(torch.zeros(1, 5, 3, dtype=torch.bool))
