"""Weight import at the published sizes: time, tensors mapped and output agreement per family.

``python -m benchmarks weights_import [--threads 1] [--families NAME ...] [--repeats 3]``

For each family the peer network is built at the size of its public checkpoint with every
parameter and buffer random (tests/weights/peers.py: transformers' DetrForObjectDetection,
transcriptions of IDEA-Research DINO, insightface and RLE, torchvision's ResNet), saved in the
peer's own format (``save_pretrained`` folder, training checkpoint, ``torch.save`` state
dict), then ``sightkit.weights.import_weights`` reads, converts, checks and writes it as a
sightkit weights file (the timed part, median of ``--repeats``). The imported model and the
peer then run on the same input (a padded batch of two images for the detectors), and the
largest absolute output difference is printed. Numbers depend on the disk cache and load.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks._conditions import Results, add_threads_argument
from sightkit.weights import import_weights
from sightkit.weights.resolve import build, convert
from sightkit.weights.sources import fetch
from tests.weights.peers import (
    IdeaDINO,
    InsightfaceIResNet,
    InsightfaceMobileFaceNet,
    RegressFlow,
    padded_batch,
    randomise,
)

HEIGHT, WIDTH = 320, 480


def _detr(backbone: str) -> Callable[[Path], tuple[nn.Module, str, Callable]]:
    def make(folder: Path) -> tuple[nn.Module, str, Callable]:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        config = transformers.DetrConfig(
            use_timm_backbone=True, backbone=backbone, use_pretrained_backbone=False, num_labels=91
        )
        peer = randomise(transformers.DetrForObjectDetection(config)).eval()
        peer.save_pretrained(folder)

        def run(model: nn.Module, images: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
            if isinstance(model, transformers.DetrForObjectDetection):
                out = model(pixel_values=images, pixel_mask=(~mask).long())
                return [out.logits, out.pred_boxes]
            out = model(images, mask)
            return [out["pred_logits"], out["pred_boxes"]]

        return peer, str(folder), run

    return make


def _dino(folder: Path) -> tuple[nn.Module, str, Callable]:
    peer = randomise(IdeaDINO()).eval()
    path = folder / "checkpoint0011_4scale.pth"
    torch.save({"model": peer.state_dict(), "epoch": 11}, path)

    def run(model: nn.Module, images: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        out = model(images, mask)
        return [out["pred_logits"], out["pred_boxes"]]

    return peer, str(path), run


def _state_dict_file(make_peer: Callable[[], nn.Module], inputs: Callable[[], torch.Tensor], name: str) -> Callable:
    def make(folder: Path) -> tuple[nn.Module, str, Callable]:
        peer = randomise(make_peer()).eval()
        path = folder / name
        torch.save(peer.state_dict(), path)

        def run(model: nn.Module, images: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
            crops = inputs()
            out = model(crops)
            if isinstance(out, dict):
                return [out["coords"], out["sigma"]]
            return list(out) if isinstance(out, tuple) else [out]

        return peer, str(path), run

    return make


FAMILIES: dict[str, Callable[[Path], tuple[nn.Module, str, Callable]]] = {
    "detr_r50 (transformers)": _detr("resnet50"),
    "detr_r101 (transformers)": _detr("resnet101"),
    "dino_4scale_r50 (IDEA)": _dino,
    "iresnet50 (insightface)": _state_dict_file(
        lambda: InsightfaceIResNet((3, 4, 14, 3)), lambda: torch.randn(2, 3, 112, 112), "backbone.pth"
    ),
    "iresnet100 (insightface)": _state_dict_file(
        lambda: InsightfaceIResNet((3, 13, 30, 3)), lambda: torch.randn(2, 3, 112, 112), "backbone.pth"
    ),
    "mobilefacenet (insightface)": _state_dict_file(
        InsightfaceMobileFaceNet, lambda: torch.randn(2, 3, 112, 112), "backbone.pth"
    ),
    "rle_r50 (official)": _state_dict_file(RegressFlow, lambda: torch.randn(2, 3, 256, 192), "rle.pth"),
}


def measure(name: str, repeats: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        peer, source, run = FAMILIES[name](folder)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            summary = import_weights(source, folder / "imported.safetensors")
            seconds.append(time.perf_counter() - start)
        fetched = fetch(source)
        ours = build(convert(fetched))
        images, mask = padded_batch(HEIGHT, WIDTH)
        torch.manual_seed(1)
        with torch.no_grad():
            mine = run(ours, images, mask)
            torch.manual_seed(1)
            theirs = run(peer, images, mask)
        difference = max((a - b).abs().max().item() for a, b in zip(mine, theirs, strict=True))
    return {
        "family": name,
        "file tensors": len(fetched.state),
        "tensors mapped": summary["tensors"],
        "import s": round(statistics.median(seconds), 2),
        "max |diff|": float(f"{difference:.2g}"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_threads_argument(parser, default=(1,))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results = Results("weights_import", args)
    for threads in args.threads:
        with results.at(threads) as entry:
            entry["rows"] = []
            for name in args.families:
                row = measure(name, args.repeats)
                entry["rows"].append(row)
                print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    results.write()


if __name__ == "__main__":
    main()
