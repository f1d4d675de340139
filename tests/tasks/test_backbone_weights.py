"""``backbone_weights=`` of ``sightkit train``: the run starts from the file's ImageNet-layout weights."""

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from typer.testing import CliRunner

from sightkit.cli.app import app
from sightkit.data.synthetic.shapes import synthesize_shapes


@pytest.mark.slow
def test_training_starts_from_the_backbone_file(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    synthesize_shapes(out=str(data), images=4, size=96, val_fraction=0.5, progress=False)
    resnet = torchvision.models.resnet18()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for tensor in resnet.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    runner = CliRunner()
    # lr=1e-20: the optimiser step changes nothing representable, so the saved convolutions must be the file's.
    common = [
        "model=detr_r18_tiny",
        f"data={data}",
        "imgsz=96",
        "max_size=128",
        "steps=1",
        "batch=2",
        "lr=1e-20",
        "val_split=",
    ]
    for name, extra in (("file", [f"backbone_weights={tmp_path / 'resnet18.pth'}"]), ("scratch", [])):
        result = runner.invoke(app, ["train", "detect", *common, f"out={tmp_path / name}", *extra])
        assert result.exit_code == 0, result.output + result.stderr
    expected = resnet.state_dict()
    started = load_file(tmp_path / "file" / "last.safetensors")
    scratch = load_file(tmp_path / "scratch" / "last.safetensors")
    stem = [k for k in started if k.endswith("stem.0.weight")]
    layer = [k for k in started if k.endswith("layer1.0.conv1.weight")]
    assert len(stem) == 1 and len(layer) == 1
    torch.testing.assert_close(started[stem[0]], expected["conv1.weight"])
    torch.testing.assert_close(started[layer[0]], expected["layer1.0.conv1.weight"])
    assert not torch.allclose(scratch[stem[0]], expected["conv1.weight"])
    config = (tmp_path / "file" / "config.yaml").read_text()
    assert "resnet18.pth" in config  # the setting is recorded with the run
