"""Face-recognition data: identity folders of face images (torchvision's ImageFolder layout)
and LFW's ``pairs.txt``.

Layout of an identity folder (what ``sightkit data synth faces`` writes under
``recognition/train`` and ``recognition/test``, and what LFW ships)::

    ROOT/NAME/NAME_0001.png       one folder per person; any image suffix
    landmarks.json (optional)     {"<path relative to its folder>": [[x, y] x 5], ...}

With landmarks a face is aligned to the ArcFace template (:func:`sightkit.ops.align_faces`);
without, the images are taken as already aligned crops (insightface's datasets are) and only
resized. Landmarks are in the continuous pixel convention of COCO (pixel ``(i, j)`` covers
``[j, j + 1) x [i, i + 1)``), which is how the synthetic generator writes them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset

from sightkit._api import export
from sightkit.data.coco import read_image
from sightkit.data.face_augment import FaceAugment, augment_face
from sightkit.ops.align import align_faces, arcface_template

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: insightface's input normalisation on [0, 1] pixels: ``(x - 0.5) / 0.5``.
FACE_MEAN = (0.5, 0.5, 0.5)
FACE_STD = (0.5, 0.5, 0.5)


def read_landmarks(path: str | Path | None) -> dict[str, Tensor]:
    """``{absolute path: [5, 2] float32}`` from a landmarks JSON (keys relative to its folder)."""
    if path is None or str(path) == "":
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmarks={str(path)!r} does not exist")
    marks = json.loads(path.read_text())
    return {
        str((path.parent / key).resolve()): torch.tensor(value, dtype=torch.float32) for key, value in marks.items()
    }


def normalise_face(crop: Tensor, mean: Sequence[float] = FACE_MEAN, std: Sequence[float] = FACE_STD) -> Tensor:
    """``[..., 3, S, S]`` pixels in [0, 255] -> ``(x / 255 - mean) / std``, float32."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=crop.device)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=crop.device)[:, None, None]
    return (crop.float() / 255 - mean_t) / std_t


def face_crop(image: Tensor, size: int, landmarks: Tensor | None) -> Tensor:
    """An aligned ``[3, size, size]`` crop (float, 0-255) of a uint8 image ``[3, H, W]``: warped to
    the ArcFace template by its 5 landmarks (continuous pixel convention), or resized without."""
    if landmarks is None:
        return TF.resize(image, [size, size], antialias=True).float()
    crops, _ = align_faces(image[None].float(), landmarks[None].double() - 0.5, size=size)
    return crops[0]


@export("data.FaceFolder")
class FaceFolder(Dataset):
    """Face images in identity folders (module docstring), as aligned, normalised crops.

    Args:
        root: the folder of identity folders.
        size: side of the crops (the embedder's ``input_size``).
        landmarks: a landmarks JSON (keys relative to its folder), or ``None``.
        train: random horizontal flips (insightface's only augmentation), and ``augment``.
        files: only these image paths (e.g. the images that ``pairs.txt`` names), else all.
        augment: one-to-many augmentation before alignment (:func:`~sightkit.data.augment_face`),
            in training only. Each sample seeds its own ``torch.Generator`` from the global RNG,
            which the trainer seeds per run and the DataLoader per worker: a run is repeatable.
            Images without landmarks are taken as aligned crops whose landmarks sit on the
            ArcFace template.
        max_pixels: images of more pixels are refused (:func:`~sightkit.data.coco.read_image`;
            ``None``: Pillow's limit; 0: none).

    A sample is ``(crop [3, size, size], {"label": identity index, "index": sample index})``.

    Attributes:
        classes: identity names, sorted; ``label`` indexes them.
        samples: ``(path, label)`` per image.
    """

    def __init__(
        self,
        root: str | Path,
        size: int = 112,
        landmarks: str | Path | None = None,
        train: bool = False,
        files: Sequence[str | Path] | None = None,
        augment: FaceAugment | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.max_pixels = max_pixels
        self.augment = augment if augment is not None and augment.enabled else None
        if not self.root.is_dir():
            raise FileNotFoundError(f"face folder {str(self.root)!r} does not exist (expected ROOT/NAME/*.png)")
        self.size, self.train = size, train
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        index = {name: k for k, name in enumerate(self.classes)}
        if files is None:
            paths = sorted(
                p for name in self.classes for p in (self.root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            paths = [Path(p) for p in files]
        self.samples = [(p, index[p.parent.name]) for p in paths if p.parent.name in index]
        if not self.samples:
            raise FileNotFoundError(f"no face images ({', '.join(IMAGE_SUFFIXES)}) in identity folders of {self.root}")
        self.landmarks = read_landmarks(landmarks)
        self._check_landmarks(landmarks)

    def _check_landmarks(self, landmarks: str | Path | None) -> None:
        if self.landmarks:
            missing = [str(p) for p, _ in self.samples if str(p.resolve()) not in self.landmarks]
            if missing:
                raise ValueError(
                    f"landmarks={str(landmarks)!r} has no entry for {len(missing)} images, e.g. {missing[0]}"
                )

    @classmethod
    def from_files(
        cls, files: Sequence[str | Path], size: int = 112, landmarks: str | Path | None = None
    ) -> FaceFolder:
        """Face images that are not in identity folders (every label is -1), e.g. for a query."""
        folder = cls.__new__(cls)
        folder.root, folder.size, folder.train, folder.classes, folder.augment = None, size, False, [], None
        folder.samples, folder.max_pixels = [(Path(p), -1) for p in files], None
        folder.landmarks = read_landmarks(landmarks)
        folder._check_landmarks(landmarks)
        return folder

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        """The file sample ``index`` reads (for the trainer's pre-flight check)."""
        return self.samples[index][0]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, int]]:
        path, label = self.samples[index]
        image = read_image(path, max_pixels=self.max_pixels).as_subclass(Tensor)
        marks = self.landmarks.get(str(path.resolve()))
        if self.train and self.augment is not None:
            if marks is None:
                height, width = image.shape[-2:]
                # The template in continuous coordinates (+ 0.5), stretched over the image.
                marks = (arcface_template(112) + 0.5) * torch.tensor([width / 112, height / 112])
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
            image, marks = augment_face(image, marks, self.augment, generator)
        crop = face_crop(image, self.size, marks)
        if self.train and bool(torch.rand(()) < 0.5):
            crop = crop.flip(-1)
        return normalise_face(crop), {"label": label, "index": index}


@export("data.FacePair")
@dataclass(frozen=True)
class FacePair:
    """One line of ``pairs.txt``: two image paths, whether they show the same person, the fold."""

    first: Path
    second: Path
    same: bool
    fold: int


def _image_path(root: Path, name: str, number: str) -> Path:
    stem = root / name / f"{name}_{int(number):04d}"
    for suffix in IMAGE_SUFFIXES:
        if stem.with_suffix(suffix).is_file():
            return stem.with_suffix(suffix)
    raise FileNotFoundError(f"pairs.txt names {name} {number}, but {stem}.* ({', '.join(IMAGE_SUFFIXES)}) is missing")


@export("data.read_lfw_pairs")
def read_lfw_pairs(pairs_file: str | Path, root: str | Path) -> list[FacePair]:
    """The pairs of an LFW ``pairs.txt`` whose images are ``root/NAME/NAME_XXXX.*``.

    The first line holds ``folds  n`` (view 2, e.g. ``10 300``) or just ``n`` (view 1, one
    set); then, per fold, ``n`` same-person lines ``NAME i j`` and ``n`` different-person
    lines ``NAME1 i NAME2 j``.
    """
    pairs_file, root = Path(pairs_file), Path(root)
    if not pairs_file.is_file():
        raise FileNotFoundError(f"pairs={str(pairs_file)!r} does not exist")
    lines = [line.split() for line in pairs_file.read_text().splitlines() if line.strip()]
    if not lines or not all(v.isdigit() for v in lines[0]) or len(lines[0]) not in (1, 2):
        raise ValueError(
            f"{pairs_file}: the first line must be 'folds n' or 'n', got {' '.join(lines[0]) if lines else ''!r}"
        )
    folds, per = (int(lines[0][0]), int(lines[0][1])) if len(lines[0]) == 2 else (1, int(lines[0][0]))
    body = lines[1:]
    if len(body) != 2 * folds * per:
        raise ValueError(f"{pairs_file}: the header promises {folds} x 2 x {per} pairs, but {len(body)} lines follow")
    pairs = []
    for number, fields in enumerate(body):
        fold = number // (2 * per)
        if len(fields) == 3:
            pairs.append(
                FacePair(_image_path(root, fields[0], fields[1]), _image_path(root, fields[0], fields[2]), True, fold)
            )
        elif len(fields) == 4:
            first, second = _image_path(root, fields[0], fields[1]), _image_path(root, fields[2], fields[3])
            pairs.append(FacePair(first, second, False, fold))
        else:
            raise ValueError(f"{pairs_file} line {number + 2}: expected 'NAME i j' or 'NAME1 i NAME2 j', got {fields}")
    return pairs


def pair_files(pairs: Sequence[FacePair]) -> tuple[list[Path], Tensor, Tensor, Tensor]:
    """The distinct images of ``pairs`` (sorted) and, per pair, the indices of its two images in
    that list, its same-person flag and its fold: ``(files, [P, 2] indices, [P] same, [P] fold)``."""
    files = sorted({p for pair in pairs for p in (pair.first, pair.second)})
    position = {p: k for k, p in enumerate(files)}
    indices = torch.tensor([[position[p.first], position[p.second]] for p in pairs], dtype=torch.long).reshape(-1, 2)
    same = torch.tensor([p.same for p in pairs], dtype=torch.bool)
    fold = torch.tensor([p.fold for p in pairs], dtype=torch.long)
    return files, indices, same, fold


def collate_faces(samples: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[dict[str, Tensor], Tensor]:
    """Stack face samples: ``({"images": [B, 3, S, S], "labels": [B]}, [B] sample indices)``."""
    images = torch.stack([crop for crop, _ in samples])
    labels = torch.tensor([target["label"] for _, target in samples], dtype=torch.long)
    indices = torch.tensor([target["index"] for _, target in samples], dtype=torch.long)
    return {"images": images, "labels": labels}, indices
