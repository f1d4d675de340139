"""Loader throughput: sightkit's COCO detection dataset with the training preset against
torchvision's ``CocoDetection`` + ``wrap_dataset_for_transforms_v2`` + the same v2 transforms.

Both read the same synthetic shapes dataset (written once to a temporary folder) through a
``DataLoader`` with the same batch size and workers; each pipeline does DETR's training
augmentation (flip, multi-scale resize or resize-crop-resize, sanitising, float conversion,
colour jitter). The peer jitters first, on uint8, as torchvision's detection references
place their photometric step; sightkit jitters last, on float pixels (a third loader is the
peer with its jitter moved last too, which isolates the dataset and collation). The peer
uses torchvision's flip and ``SanitizeBoundingBoxes`` and sightkit's ``RandomSizeCrop``
(torchvision has no DETR size crop), and its references' collate (``tuple(zip(*batch))``);
sightkit's loader also pads the batch into one tensor with its mask. torchvision's
``CocoDetection`` needs pycocotools; faster-coco-eval stands in for it.
Before timing, both pipelines without augmentation must give the same images, boxes and
category ids.

    python -m benchmarks loader [--images 200] [--size 320] [--batch 8] [--workers 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from sightkit.data import CocoDetection, RandomSizeCrop, collate_detection, detection_transforms, synthesize_shapes


def _peer_transforms(size: int, max_size: int, jitter_last: bool = False) -> v2.Compose:
    """The same recipe as ``detection_transforms("train", size, max_size)`` in torchvision's own pieces."""
    jitter = v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)], p=0.8)
    scales = sorted({round(size * (0.6 + 0.04 * k)) for k in range(11)})
    multi_scale = v2.RandomShortestSize(min_size=scales, max_size=max_size, antialias=True)
    crop_low = round(size * 0.48)
    return v2.Compose(
        [
            v2.ToImage(),
            *([] if jitter_last else [jitter]),
            v2.RandomHorizontalFlip(),
            v2.RandomChoice(
                [
                    multi_scale,
                    v2.Compose(
                        [
                            v2.RandomShortestSize(
                                min_size=sorted({round(size * r) for r in (0.5, 0.625, 0.75)}), antialias=True
                            ),
                            RandomSizeCrop(crop_low, max(crop_low, round(size * 0.75))),
                            multi_scale,
                        ]
                    ),
                ]
            ),
            v2.SanitizeBoundingBoxes(),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            *([jitter] if jitter_last else []),
        ]
    )


def _peer_dataset(images: Path, annotations: Path, transforms: Any) -> Any:
    import faster_coco_eval
    from torchvision.datasets import CocoDetection as TorchvisionCocoDetection
    from torchvision.datasets import wrap_dataset_for_transforms_v2

    faster_coco_eval.init_as_pycocotools()
    dataset = TorchvisionCocoDetection(str(images), str(annotations), transforms=transforms)
    return wrap_dataset_for_transforms_v2(dataset, target_keys={"boxes", "labels", "image_id"})


def _tuple_collate(batch: list[Any]) -> tuple[Any, ...]:
    return tuple(zip(*batch, strict=True))


def check_agreement(images: Path, annotations: Path) -> int:
    """Both datasets without augmentation give equal images, boxes and category ids; returns the count."""
    ours = CocoDetection(images, annotations)
    peer = _peer_dataset(images, annotations, v2.ToImage())
    for index in range(len(ours)):
        image, target = ours[index]
        peer_image, peer_target = peer[index]
        category_ids = ours.category_map.to_category_ids(target["labels"])
        same = (
            torch.equal(image.as_subclass(torch.Tensor), peer_image.as_subclass(torch.Tensor))
            and torch.equal(target["boxes"].as_subclass(torch.Tensor), peer_target["boxes"].as_subclass(torch.Tensor))
            and torch.equal(category_ids, peer_target["labels"])
        )
        if not same:
            raise SystemExit(f"the two datasets disagree on image index {index} ({ours.image_path(index)})")
    return len(ours)


def images_per_second(loader: DataLoader, epochs: int) -> float:
    count = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += len(batch[0])  # the images: a [B, 3, H, W] tensor (sightkit) or a tuple of B (torchvision)
    return count / (time.perf_counter() - start)


def cpu_ms_per_image(loader: DataLoader) -> float:
    """CPU time per image of one pass of ``loader``'s dataset and collate in this process: what
    each worker spends, and less sensitive than wall time to other programs on the machine."""
    dataset, collate, batch = loader.dataset, loader.collate_fn, loader.batch_size or 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in loader workers
    start = time.process_time()
    for first in range(0, len(dataset), batch):
        collate([dataset[i] for i in range(first, min(first + batch, len(dataset)))])
    elapsed = time.process_time() - start
    torch.set_num_threads(threads)
    return elapsed * 1000 / len(dataset)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=320, help="largest side of the synthetic images")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement (after one warm-up epoch)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating measurements of each loader")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        paths = synthesize_shapes(out=tmp, images=args.images, size=args.size, val_fraction=0.0, progress=False)
        images, annotations = paths["images"], paths["train"]
        agreed = check_agreement(images, annotations)
        size, max_size = round(0.8 * args.size), args.size * 2
        common = {"batch_size": args.batch, "num_workers": args.workers, "shuffle": True, "persistent_workers": True}
        torch.manual_seed(0)
        ours = DataLoader(
            CocoDetection(images, annotations, detection_transforms("train", size=size, max_size=max_size)),
            collate_fn=functools.partial(collate_detection, size_divisible=32),
            **common,
        )
        loaders = {
            "sightkit": ours,
            "torchvision": DataLoader(
                _peer_dataset(images, annotations, _peer_transforms(size, max_size)),
                collate_fn=_tuple_collate,
                **common,
            ),
            "torchvision, jitter last": DataLoader(
                _peer_dataset(images, annotations, _peer_transforms(size, max_size, jitter_last=True)),
                collate_fn=_tuple_collate,
                **common,
            ),
        }
        for loader in loaders.values():  # start the persistent workers, warm caches
            for _ in loader:
                pass
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        cpu: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(args.rounds):
            for name, loader in loaders.items():
                rates[name].append(images_per_second(loader, args.epochs))
                cpu[name].append(cpu_ms_per_image(loader))

    median = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"loader: {args.images} synthetic shapes images (<= {args.size} px, PNG), batch {args.batch}, "
        f"{args.workers} workers, train preset size={size} max_size={max_size}"
    )
    print(f"  values: images, boxes and category ids agree on {agreed}/{agreed} images (no augmentation)")
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    for name, values in rates.items():
        print(
            f"  {name:<25} {median[name]:7.1f} images/s median (rounds: {', '.join(f'{v:.1f}' for v in values)}); "
            f"{cpu_median[name]:.2f} CPU ms/image in one process"
        )
    for name in ("torchvision", "torchvision, jitter last"):
        print(
            f"  ratio sightkit / {name}: {median['sightkit'] / median[name]:.2f}x images/s, "
            f"{cpu_median[name] / cpu_median['sightkit']:.2f}x less CPU per image (target >= 1.0)"
        )
