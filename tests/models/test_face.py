"""Face embedders: insightface's parameter counts, shapes at every crop size, forward/backward
and ONNX parity for each registered embedder, flip-averaged normalised embeddings."""

import pytest
import torch
import torch.nn.functional as F

from sightkit.models import IResNet, MobileFaceNet, create_model, embed_faces, list_models

EMBEDDERS = [name for name in list_models() if name.startswith(("iresnet", "mobilefacenet"))]
SMALL = ["iresnet_tiny", "mobilefacenet_tiny"]


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "millions"),
    # The sizes insightface reports for its backbones (arcface_torch); the MobileFaceNet paper
    # (Chen et al. 2018, Table 2) gives 0.99M for scale 1 with a 128-d embedding.
    [("iresnet50", 43.59), ("iresnet100", 65.16)],
)
def test_parameter_counts_match_insightface(name: str, millions: float) -> None:
    with torch.device("meta"):  # no memory, no initialisation: only the shapes count
        model = create_model(name)
    assert abs(_count(model) / 1e6 - millions) < 0.01


def test_mobilefacenet_is_the_paper_size() -> None:
    with torch.device("meta"):
        model = MobileFaceNet(scale=1, num_features=128)
    assert abs(_count(model) / 1e6 - 0.99) < 0.02


def test_iresnet_stage_layout() -> None:
    with torch.device("meta"):
        model = create_model("iresnet100")
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 13, 30, 3]
    assert model.fc.in_features == 512 * 7 * 7 and not model.features.weight.requires_grad


@pytest.mark.parametrize("name", SMALL)
def test_forward_and_backward(name: str) -> None:
    model = create_model(name)
    size = model.input_size
    embeddings = model(torch.randn(3, 3, size, size))
    assert embeddings.shape == (3, 128) and torch.isfinite(embeddings).all()
    embeddings.square().mean().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("size", [32, 48, 112])
def test_any_multiple_of_16(size: int) -> None:
    for model in (IResNet((1, 1, 1, 1), (8, 8, 8, 8), 16, input_size=size), MobileFaceNet((1, 1, 1, 1), 1, 16, size)):
        assert model.eval()(torch.randn(1, 3, size, size)).shape == (1, 16)


def test_embed_faces_is_normalised_and_flip_invariant() -> None:
    model = create_model("iresnet_tiny").eval()
    crops = torch.randn(5, 3, 64, 64)
    embeddings = embed_faces(model, crops, batch=2)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(embeddings, embed_faces(model, crops.flip(-1)), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        plain = F.normalize(model(crops) + model(crops.flip(-1)))
    torch.testing.assert_close(embeddings, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embed_faces(model, crops, flip=False), F.normalize(model(crops)).detach())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iresnet_tiny"])  # MobileFaceNet's export is in the face CLI test
def test_onnx_export_matches_eager(name: str, tmp_path: object) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = create_model(name).eval()
    crops = torch.randn(2, 3, model.input_size, model.input_size)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (crops,), path, dynamo=True, optimize=False, input_names=["crops"])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"crops": crops.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got[0]), model(crops), atol=1e-4, rtol=1e-4)


def test_bad_settings_are_errors() -> None:
    with pytest.raises(ValueError, match="input_size must be a positive multiple of 16, got 100"):
        IResNet(input_size=100)
    with pytest.raises(ValueError, match=r"layers and widths must be 4 positive integers each"):
        IResNet(layers=(1, 1, 1))
    with pytest.raises(ValueError, match=r"crops must be a tensor \[N, 3, S, S\]"):
        embed_faces(create_model("iresnet_tiny"), torch.zeros(3, 64, 64))
