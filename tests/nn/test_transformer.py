"""DETR transformer layers against torch.nn's layers (equal when no position encoding is
added), and the behaviour that torch's layers lack: position terms, padding masks,
intermediate decoder outputs."""

import pytest
import torch
from torch import nn

from sightkit.nn import Transformer, TransformerDecoderLayer, TransformerEncoderLayer

D, HEADS, FFN = 16, 4, 32


def copy_encoder_weights(ours: TransformerEncoderLayer, ref: nn.TransformerEncoderLayer) -> None:
    ref.self_attn.load_state_dict(ours.self_attn.state_dict())
    ref.linear1.load_state_dict(ours.ffn.linear1.state_dict())
    ref.linear2.load_state_dict(ours.ffn.linear2.state_dict())
    ref.norm1.load_state_dict(ours.norm1.state_dict())
    ref.norm2.load_state_dict(ours.norm2.state_dict())


def randomise_norms(module: nn.Module) -> None:
    """LayerNorms start at weight 1, bias 0; random values make the comparisons sensitive to them."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_layer_equals_torch_without_position(pre_norm: bool) -> None:
    ours = TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0, normalize_before=pre_norm).eval()
    randomise_norms(ours)
    ref = nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=pre_norm).eval()
    copy_encoder_weights(ours, ref)
    src = torch.randn(2, 7, D)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    with torch.no_grad():
        torch.testing.assert_close(ours(src, None, padding), ref(src, src_key_padding_mask=padding))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_layer_equals_torch_without_position(pre_norm: bool) -> None:
    ours = TransformerDecoderLayer(D, HEADS, FFN, dropout=0.0, normalize_before=pre_norm).eval()
    randomise_norms(ours)
    ref = nn.TransformerDecoderLayer(D, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=pre_norm).eval()
    ref.self_attn.load_state_dict(ours.self_attn.state_dict())
    ref.multihead_attn.load_state_dict(ours.cross_attn.state_dict())
    ref.linear1.load_state_dict(ours.ffn.linear1.state_dict())
    ref.linear2.load_state_dict(ours.ffn.linear2.state_dict())
    for i in (1, 2, 3):
        getattr(ref, f"norm{i}").load_state_dict(getattr(ours, f"norm{i}").state_dict())
    tgt, memory = torch.randn(2, 5, D), torch.randn(2, 9, D)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[0, 6:] = True
    with torch.no_grad():
        expected = ref(tgt, memory, memory_key_padding_mask=padding)
        torch.testing.assert_close(ours(tgt, memory, memory_key_padding_mask=padding), expected)


def test_encoder_adds_position_to_queries_and_keys_only() -> None:
    """With ``pos``, attention scores use ``src + pos`` while the attended values stay ``src``:
    the same as a torch layer whose attention is called with those three inputs."""
    layer = TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0).eval()
    src, pos = torch.randn(1, 6, D), torch.randn(1, 6, D)
    with torch.no_grad():
        attended = layer.self_attn(src + pos, src + pos, src, need_weights=False)[0]
        x = layer.norm1(src + attended)
        expected = layer.norm2(x + layer.ffn.linear2(layer.ffn.linear1(x).relu()))
        torch.testing.assert_close(layer(src, pos), expected)


def make_transformer(**kw: object) -> Transformer:
    settings = {"d_model": D, "nhead": HEADS, "num_encoder_layers": 2, "num_decoder_layers": 3, "dim_feedforward": FFN}
    return Transformer(**{**settings, "dropout": 0.0, **kw}).eval()


@pytest.mark.parametrize("pre_norm", [False, True])
def test_padded_tokens_do_not_change_the_decoder_output(pre_norm: bool) -> None:
    model = make_transformer(normalize_before=pre_norm)
    queries = torch.randn(4, D)
    src, pos = torch.randn(1, 10, D), torch.randn(1, 10, D)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 7:] = True
    changed_src, changed_pos = src.clone(), pos.clone()
    changed_src[0, 7:] = 100.0
    changed_pos[0, 7:] = -50.0
    with torch.no_grad():
        hs, memory = model(src, mask, queries, pos)
        hs2, memory2 = model(changed_src, mask, queries, changed_pos)
        # The same as if the padded tokens were not there at all.
        hs3, memory3 = model(src[:, :7], None, queries, pos[:, :7])
    torch.testing.assert_close(hs, hs2)
    torch.testing.assert_close(memory[:, :7], memory2[:, :7])
    torch.testing.assert_close(hs, hs3)
    torch.testing.assert_close(memory[:, :7], memory3)
    assert not torch.allclose(model(src, None, queries, pos)[0], hs)  # the mask matters


def test_intermediate_outputs_are_each_decoder_layer_normalised() -> None:
    model = make_transformer()
    single = make_transformer(return_intermediate=False)
    single.load_state_dict(model.state_dict())
    src, pos, queries = torch.randn(2, 8, D), torch.randn(2, 8, D), torch.randn(5, D)
    with torch.no_grad():
        hs, memory = model(src, None, queries, pos)
        last, _ = single(src, None, queries, pos)
        # Replay the decoder by hand.
        tgt = torch.zeros(2, 5, D)
        expected = []
        for layer in model.decoder_layers:
            tgt = layer(tgt, memory, pos, queries.expand(2, -1, -1))
            expected.append(model.decoder_norm(tgt))
    assert hs.shape == (3, 2, 5, D) and last.shape == (1, 2, 5, D)
    torch.testing.assert_close(hs, torch.stack(expected))
    torch.testing.assert_close(last[0], hs[-1])


def test_pre_norm_adds_a_final_encoder_norm() -> None:
    assert isinstance(make_transformer(normalize_before=True).encoder_norm, nn.LayerNorm)
    assert isinstance(make_transformer().encoder_norm, nn.Identity)


def test_bad_settings_are_errors() -> None:
    with pytest.raises(ValueError, match="d_model must be divisible by nhead, got d_model=10 and nhead=4"):
        Transformer(d_model=10, nhead=4)
    with pytest.raises(ValueError, match="num_decoder_layers >= 1"):
        Transformer(d_model=8, nhead=2, num_decoder_layers=0)
