"""Face processing on synthetic faces: what one-to-many augmentation buys a tiny embedder across
pose and occlusion, and what many-to-one templates buy identification.

``python -m benchmarks face_processing [--steps 300] [--batch 32] [--size 48] [--threads 1] [--out FILE.json]``

The figures and conditions go to ``benchmarks/results/face_processing.json``.

Data (``sightkit.data.synthetic.faces``, rendered in memory at 64 x 64, aligned to ``--size``):

- training: ``--train-identities`` people x ``--per-identity`` images, yaw in [-0.3, 0.3], no
  occluder: a narrow training distribution, as real training sets are mostly frontal;
- test: ``--test-identities`` other people x ``--per-identity`` images, yaw in [-0.9, 0.9]; each
  test image also rendered with an occluder (sunglasses or a mask, alternating), same face,
  pose and light.

Two ``iresnet_tiny`` embedders (128-d, ``--size`` input) are trained from the same initialisation with the same
step budget, batch and sample order, ArcFace (``losses.CombinedMarginLoss``, s = 32, m = 0.3)
over a plain normalised classifier, SGD with a cosine schedule: one with random flips only (the
insightface default), one with ``augment_face`` (pose 0.6, expression 0.3, illumination 0.5, occlusion 0.4)
and, on request, the same without the pose group or without the landmark jitter.

Verification, every pair of test images, split by condition: clean pairs with ``|dyaw| < 0.2``,
clean pairs with ``|dyaw| >= 0.4``, and all pairs with the second image occluded. Per condition:
10-fold accuracy (LFW protocol, ``eval.kfold_accuracy``) on all its same-person pairs and as many
random different-person pairs, and TAR at FAR = 1e-3 over all its different-person pairs.

Identification: per test person, 5 enrolment images (each occluded with probability 0.3) and 5
clean probes; rank-1 accuracy against one template per person (plain and quality-weighted,
``eval.pool_templates`` / ``eval.quality_weights``), against single-image entries (the best of
the person's images, ``mode="best"``, a gallery of independent entries), and against one image
per person (the first enrolled).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit.data.face_augment import FaceAugment, augment_face
from sightkit.data.faces import normalise_face
from sightkit.data.synthetic.faces import OCCLUDERS, FaceIdentity, render_face_crop
from sightkit.eval.face import kfold_accuracy, tar_at_far
from sightkit.eval.face_quality import face_quality
from sightkit.eval.face_template import identity_scores, quality_weights
from sightkit.losses.margin import CombinedMarginLoss
from sightkit.models.face import embed_faces
from sightkit.models.registry import create_model
from sightkit.ops.align import align_faces

RAW = 64  # side of the rendered images
#: The trainings compared, by name: ``None`` is random flips only.
TRAININGS = {
    "flip only": None,
    "augment_face": FaceAugment(pose=0.6, expression=0.3, illumination=0.5, occlusion=0.4),
    "no pose group": FaceAugment(expression=0.3, illumination=0.5, occlusion=0.4),
    "pose, no jitter": FaceAugment(
        pose=0.6, expression=0.3, illumination=0.5, occlusion=0.4, rotation=0.0, scale=0.0, shift=0.0
    ),
}


def render(people: range, per: int, seed: int, max_yaw: float, occluded: bool = False) -> dict[str, Tensor]:
    """Images ``[N, 3, RAW, RAW]`` uint8, landmarks ``[N, 5, 2]``, yaw ``[N]`` and labels ``[N]``; with
    ``occluded`` the same renders wearing sunglasses (even image numbers) or a mask (odd)."""
    images, marks, yaws, labels = [], [], [], []
    for k in people:
        identity = FaceIdentity.sample(np.random.default_rng([seed, 1, k]))
        for n in range(per):
            occluder = OCCLUDERS[n % 2] if occluded else ""
            image, points, pose, _ = render_face_crop(
                identity, np.random.default_rng([seed, 2, k, n]), RAW, max_yaw, occluder=occluder
            )
            images.append(torch.from_numpy(image).permute(2, 0, 1))
            marks.append(torch.from_numpy(points).float())
            yaws.append(pose.yaw)
            labels.append(k)
    return {
        "images": torch.stack(images),
        "landmarks": torch.stack(marks),
        "yaw": torch.tensor(yaws),
        "labels": torch.tensor(labels),
    }


def aligned(images: Tensor, landmarks: Tensor, size: int) -> Tensor:
    """Normalised aligned crops ``[N, 3, size, size]`` (landmarks in the continuous convention)."""
    crops, _ = align_faces(images.float(), landmarks.double() - 0.5, size)
    return normalise_face(crops)


class Embedder(nn.Module):
    """``iresnet_tiny`` and its ArcFace classifier (normalised centres)."""

    def __init__(self, classes: int, size: int) -> None:
        super().__init__()
        self.backbone = create_model("iresnet_tiny", input_size=size)
        self.centres = nn.Parameter(torch.randn(classes, self.backbone.num_features) * 0.01)
        self.margin = CombinedMarginLoss(scale=32.0, m2=0.3)

    def forward(self, crops: Tensor, labels: Tensor) -> Tensor:
        cosine = F.normalize(self.backbone(crops)) @ F.normalize(self.centres).T
        return self.margin(cosine, labels)


def train(
    data: dict[str, Tensor], augment: FaceAugment | None, steps: int, batch: int, size: int, seed: int
) -> nn.Module:
    """Train from the seed's initialisation with the seed's sample order; returns the backbone."""
    torch.manual_seed(seed)
    labels = data["labels"] - data["labels"].min()
    model = Embedder(int(labels.max()) + 1, size)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if p.dim() <= 1]
    optimiser = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}], lr=0.1, momentum=0.9
    )
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))),
    )
    order = torch.Generator().manual_seed(seed)  # the same samples and flips for both runs
    views = torch.Generator().manual_seed(seed + 1)  # the augmentations' own stream
    model.train()
    for _ in range(steps):
        index = torch.randint(labels.numel(), (batch,), generator=order)
        flips = torch.rand(batch, generator=order) < 0.5
        images, marks = data["images"][index].float(), data["landmarks"][index]
        if augment is not None:
            pairs = [augment_face(images[i], marks[i], augment, views) for i in range(batch)]
            images = torch.stack([p[0] for p in pairs])
            marks = torch.stack([p[1] for p in pairs])
        crops = aligned(images, marks, size)
        crops = torch.where(flips[:, None, None, None], crops.flip(-1), crops)
        loss = model(crops, labels[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.backbone.eval()


def verification(scores: Tensor, same: Tensor, seed: int) -> dict[str, float]:
    """10-fold accuracy on all same-person pairs and as many random different-person pairs; TAR at
    FAR 1e-3 over all different-person pairs."""
    generator = torch.Generator().manual_seed(seed)
    positive = torch.nonzero(same).squeeze(1)
    negative = torch.nonzero(~same).squeeze(1)
    chosen = negative[torch.randperm(negative.numel(), generator=generator)[: positive.numel()]]
    balanced = torch.cat([positive, chosen])
    folds = torch.randperm(balanced.numel(), generator=generator) % 10
    kfold = kfold_accuracy(scores[balanced], same[balanced], folds)
    tar = tar_at_far(scores, same, (1e-3,)).get(1e-3, (math.nan, 0.0))[0]
    return {
        "accuracy": kfold["accuracy"],
        "std": kfold["std"],
        "tar@far=1e-3": tar,
        "same": int(positive.numel()),
        "different": int(negative.numel()),
    }


def evaluate(backbone: nn.Module, clean: dict[str, Tensor], occluded: dict[str, Tensor], size: int, seed: int) -> dict:
    embeddings = embed_faces(backbone, aligned(clean["images"], clean["landmarks"], size))
    hidden = embed_faces(backbone, aligned(occluded["images"], occluded["landmarks"], size))
    count = embeddings.shape[0]
    first, second = torch.triu_indices(count, count, offset=1)
    same = clean["labels"][first] == clean["labels"][second]
    dyaw = (clean["yaw"][first] - clean["yaw"][second]).abs()
    clean_scores = (embeddings[first] * embeddings[second]).sum(1)
    hidden_scores = (embeddings[first] * hidden[second]).sum(1)
    near, far = dyaw < 0.2, dyaw >= 0.4
    results = {
        "|dyaw|<0.2": verification(clean_scores[near], same[near], seed),
        "|dyaw|>=0.4": verification(clean_scores[far], same[far], seed),
        "occluded one side": verification(hidden_scores, same, seed),
    }
    # Identification: images 0-4 of each person enrolled (each occluded with probability 0.3), 5-9 probes.
    per = int((clean["labels"] == clean["labels"][0]).sum())
    number = torch.arange(count) % per
    enrol, probe = number < per // 2, number >= per // 2
    swap = torch.rand(count, generator=torch.Generator().manual_seed(seed + 2)) < 0.3
    gallery_images = torch.where(swap[:, None, None, None], occluded["images"], clean["images"])[enrol]
    gallery = torch.where(swap[:, None], hidden, embeddings)[enrol]
    weights = quality_weights(face_quality(gallery_images, clean["landmarks"][enrol]))
    labels = clean["labels"][enrol]
    truth = clean["labels"][probe]
    for name, mode, w in (
        ("template (quality-weighted)", "template", weights),
        ("template (plain mean)", "template", None),
        ("single-image entries (best of)", "best", None),
        ("one image per person", "first", None),
    ):
        if mode == "first":
            first_image = number[enrol] == 0
            scores, identities = identity_scores(embeddings[probe], gallery[first_image], labels[first_image])
        else:
            scores, identities = identity_scores(embeddings[probe], gallery, labels, mode=mode, weights=w)
        hits = torch.tensor(identities)[scores.argmax(1)] == truth
        results[f"rank-1 {name}"] = float(hits.float().mean())
    return results


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks face_processing", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=48, help="side of the aligned crops")
    parser.add_argument("--train-identities", type=int, default=100)
    parser.add_argument("--test-identities", type=int, default=40)
    parser.add_argument("--per-identity", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    # The two the comparison needs by default (about 11 minutes at a load of 15 on 2 cores); add "no pose group".
    parser.add_argument("--trainings", nargs="+", default=["flip only", "augment_face"], choices=list(TRAININGS))
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1],
        help="torch threads (the first is used; 1 is fastest on a loaded machine)",
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "face_processing.json"), help="results JSON ('': none)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads[0])
    started = time.perf_counter()
    load = os.getloadavg()
    train_data = render(range(args.train_identities), args.per_identity, args.seed, max_yaw=0.3)
    test_people = range(args.train_identities, args.train_identities + args.test_identities)
    clean = render(test_people, args.per_identity, args.seed, max_yaw=0.9)
    occluded = render(test_people, args.per_identity, args.seed, max_yaw=0.9, occluded=True)
    print(
        f"{args.train_identities} x {args.per_identity} training images (|yaw| <= 0.3), {args.test_identities} x "
        f"{args.per_identity} test images (|yaw| <= 0.9, and occluded copies); {args.steps} steps of {args.batch} "
        f"{args.size}-pixel crops, "
        f"{args.threads[0]} threads, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
        f"rendered in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    results: dict[str, dict] = {}
    for name in args.trainings:
        augment = TRAININGS[name]
        begin = time.perf_counter()
        backbone = train(train_data, augment, args.steps, args.batch, args.size, args.seed)
        seconds = time.perf_counter() - begin
        results[name] = {**evaluate(backbone, clean, occluded, args.size, args.seed), "train_seconds": seconds}
        print(f"trained '{name}' in {seconds:.0f} s", flush=True)
    conditions = ("|dyaw|<0.2", "|dyaw|>=0.4", "occluded one side")
    print(f"\n{'training':<16}{'condition':<20}{'10-fold acc':>14}{'TAR@FAR=1e-3':>14}{'same/diff pairs':>18}")
    for name, result in results.items():
        for condition in conditions:
            r = result[condition]
            accuracy = f"{r['accuracy']:.3f}±{r['std']:.3f}"
            print(f"{name:<16}{condition:<20}{accuracy:>14}{r['tar@far=1e-3']:>14.3f}{r['same']:>9}/{r['different']}")
    print(f"\n{'training':<16}{'identification (5 enrolled, 5 probes per person)':<50}{'rank-1':>8}")
    for name, result in results.items():
        for key, value in result.items():
            if key.startswith("rank-1"):
                print(f"{name:<16}{key[len('rank-1 ') :]:<50}{value:>8.3f}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k != "out"}
        record = {"benchmark": "face_processing", "arguments": settings, "load_before": load, "results": results}
        record["load_after"] = os.getloadavg()
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        print(f"figures written to {args.out}")
