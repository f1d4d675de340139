"""What a predictor returns for one image or video frame: typed arrays, a picture, JSON and COCO records.

>>> import numpy as np
>>> r = Results(image=np.zeros((20, 30, 3), np.uint8), path="a.jpg", task="detect", names=["cat"],
...             boxes=np.array([[2.0, 3.0, 12.0, 8.0]]), scores=np.array([0.9]), labels=np.array([0]))
>>> r.to_dict()
{'path': 'a.jpg', 'frame': None, 'boxes': [[2.0, 3.0, 12.0, 8.0]], 'scores': [0.9], 'labels': [0], 'names': ['cat']}
>>> r.to_coco(image_id=7)
[{'image_id': 7, 'category_id': 0, 'bbox': [2.0, 3.0, 10.0, 5.0], 'score': 0.9}]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from sightkit._api import export

#: Suffixes that make :meth:`Results.save` write a file rather than into a folder.
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PIXEL_DECIMALS, SCORE_DECIMALS, EMBEDDING_DECIMALS = 2, 4, 6

# Per-instance fields: (name, dtype, trailing shape); None in a shape is "any size".
_INSTANCE_FIELDS: tuple[tuple[str, type, tuple[int | None, ...]], ...] = (
    ("boxes", np.float32, (4,)),
    ("scores", np.float32, ()),
    ("labels", np.int64, ()),
    ("keypoints", np.float32, (None, 3)),
    ("landmarks", np.float32, (5, 2)),
    ("head_pose", np.float32, (3,)),
    ("embeddings", np.float32, (None,)),
)


@export("sightkit.Results")
@dataclass(kw_only=True, eq=False)
class Results:
    """The predictions for one image (or one video frame).

    Array fields are numpy (torch tensors are converted); those a task does not produce are
    ``None``. ``N`` is the number of instances.

    Attributes:
        image: the input picture, uint8 ``[H, W, 3]`` RGB.
        path: the file or URL it came from (``"image<i>"`` for in-memory images).
        frame: the frame number in a video, ``None`` for a still image.
        task: the task that produced it (``"detect"``, ``"pose"``, ``"segment"``,
            ``"face"``, ``"face_detect"``).
        names: class names by label index.
        boxes: float32 ``[N, 4]`` ``xyxy`` pixels of ``image``, clipped to the image.
        scores: float32 ``[N]`` confidences.
        labels: int64 ``[N]`` label indices into ``names``.
        category_ids: dataset category id of each label index (COCO ``category_id``), or
            ``None`` to write the label index itself.
        keypoints: float32 ``[N, K, 3]`` as (x, y, score) in pixels.
        landmarks: float32 ``[N, 5, 2]`` face landmarks (eyes, nose, mouth corners) in pixels.
        head_pose: float32 ``[N, 3]`` (yaw, pitch, roll) of each face in radians, from its
            landmarks (:func:`sightkit.ops.head_pose`); NaN where they coincide.
        masks: int64 ``[H, W]`` class map (label index per pixel; 0 is the background).
        embeddings: float32 ``[N, D]`` (L2-normalised for faces).
        extra: anything else a task returns; :meth:`plot` reads ``"skeleton"`` (1-based
            limb pairs) and ``"keypoint_names"`` (default: COCO's 17 person keypoints when
            ``K == 17``).
    """

    image: np.ndarray
    path: str = ""
    frame: int | None = None
    task: str
    names: list[str] = field(default_factory=list)
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    category_ids: list[int] | None = None
    keypoints: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    head_pose: np.ndarray | None = None
    masks: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = _as_numpy(self.image)
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(
                f"image must be uint8 [H, W, 3] RGB; got {self.image.dtype} of shape {tuple(self.image.shape)}"
            )
        height, width = self.image.shape[:2]
        self.names = list(self.names)
        count = None
        for name, dtype, trailing in _INSTANCE_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            value = _as_numpy(value).astype(dtype, copy=False)
            shape_ok = value.ndim == 1 + len(trailing) and all(
                want is None or got == want for got, want in zip(value.shape[1:], trailing, strict=True)
            )
            if not shape_ok:
                expected = ", ".join(["N", *("*" if t is None else str(t) for t in trailing)])
                raise ValueError(f"{name} must be [{expected}]; got shape {tuple(value.shape)}")
            if count is not None and len(value) != count:
                raise ValueError(f"{name} has {len(value)} rows but the other per-instance fields have {count}")
            count = len(value)
            setattr(self, name, value)
        if self.boxes is not None:
            self.boxes = self.boxes.copy()
            self.boxes[:, 0::2] = self.boxes[:, 0::2].clip(0, width)
            self.boxes[:, 1::2] = self.boxes[:, 1::2].clip(0, height)
        if self.masks is not None:
            self.masks = _as_numpy(self.masks).astype(np.int64, copy=False)
            if self.masks.shape != (height, width):
                raise ValueError(f"masks must be an [H, W] = {[height, width]} class map; got {list(self.masks.shape)}")
        for name, values in (("labels", self.labels), ("masks", self.masks)):
            if (
                values is not None
                and values.size
                and self.names
                and (values.min() < 0 or values.max() >= len(self.names))
            ):
                raise ValueError(
                    f"{name} must be label indices in [0, {len(self.names)}) (names has {len(self.names)}); "
                    f"got values in [{values.min()}, {values.max()}]"
                )
        if self.category_ids is not None:
            self.category_ids = [int(c) for c in self.category_ids]
            if self.names and len(self.category_ids) != len(self.names):
                raise ValueError(
                    f"category_ids must have one id per name ({len(self.names)}); got {len(self.category_ids)}"
                )

    def __eq__(self, other: object) -> bool:
        """Equal fields, arrays compared element by element (exactly; ``None`` equals only ``None``)."""
        if not isinstance(other, Results):
            return NotImplemented
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            if isinstance(mine, np.ndarray) or isinstance(theirs, np.ndarray):
                if not (isinstance(mine, np.ndarray) and isinstance(theirs, np.ndarray)):
                    return False
                if mine.dtype != theirs.dtype or not np.array_equal(mine, theirs):
                    return False
            elif mine != theirs:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  (mutable, compared by value)

    # ------------------------------------------------------------------ sizes and names

    def __len__(self) -> int:
        """The number of instances (for a class map: the number of classes present)."""
        for name, _, _ in _INSTANCE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                return len(value)
        return 0 if self.masks is None else len(np.unique(self.masks))

    def instance_names(self) -> list[str]:
        """The class name of each instance (``names[label]``; the label as text when ``names`` is short)."""
        if self.labels is None:
            return []
        return [self._name(label) for label in self.labels.tolist()]

    def _name(self, label: int) -> str:
        return self.names[label] if 0 <= label < len(self.names) else str(label)

    def __repr__(self) -> str:
        height, width = self.image.shape[:2]
        where = f"path={self.path!r}" + (f", frame={self.frame}" if self.frame is not None else "")
        parts = [f"task={self.task!r}", where, f"image={height}x{width}"]
        present = [n for n, _, _ in _INSTANCE_FIELDS if getattr(self, n) is not None]
        if present:
            counts: dict[str, int] = {}
            for name in self.instance_names():
                counts[name] = counts.get(name, 0) + 1
            detail = ", ".join(f"{n} {name}" for name, n in counts.items())
            parts.append(f"{len(self)} instances" + (f" ({detail})" if detail else "") + f": {', '.join(present)}")
        if self.masks is not None:
            classes = [self._name(k) for k in np.unique(self.masks).tolist()]
            parts.append(f"masks of {', '.join(classes)}")
        return f"Results({', '.join(parts)})"

    # ------------------------------------------------------------------ pictures

    def plot(self, conf: float | None = None) -> np.ndarray:
        """A picture of the predictions: uint8 ``[H, W, 3]`` RGB (a new array; ``image`` is kept).

        The class map is blended in with a legend of its classes; boxes are outlined in a
        colour per class with ``"name score"``; keypoints and limbs are coloured by body
        side (left orange, right blue, middle green); landmarks are dots, and the head pose
        short x, y, z axes (red, green, blue) from the nose tip.

        Args:
            conf: leave out instances scoring below it (all are drawn when ``None``).
        """
        from sightkit.tasks.draw import PALETTE, plot_class_map, plot_detections
        from sightkit.tasks.draw_faces import plot_head_pose, plot_landmarks
        from sightkit.tasks.draw_pose import plot_poses

        picture = self.image
        if self.masks is not None:
            picture = plot_class_map(picture, self.masks, self.names or [str(k) for k in range(self.masks.max() + 1)])
        keep = np.ones(len(self), dtype=bool) if self.masks is None or self.boxes is not None else None
        if keep is not None and conf is not None and self.scores is not None:
            keep = self.scores >= conf
        if self.boxes is not None and keep is not None:
            labels = self.labels[keep].tolist() if self.labels is not None else [None] * int(keep.sum())
            scores = self.scores[keep].tolist() if self.scores is not None else [None] * int(keep.sum())
            texts = [
                " ".join(t for t in ("" if lab is None else self._name(lab), "" if s is None else f"{s:.2f}") if t)
                for lab, s in zip(labels, scores, strict=True)
            ]
            colours = [PALETTE[(lab or 0) % len(PALETTE)] for lab in labels]
            picture = plot_detections(picture, self.boxes[keep], texts, colours)
        if self.keypoints is not None and keep is not None:
            names, skeleton = self._keypoint_layout()
            picture = plot_poses(picture, self.keypoints[keep], skeleton, names, None, self.extra.get("threshold", 0.3))
        if self.landmarks is not None and keep is not None:
            picture = plot_landmarks(picture, self.landmarks[keep])
            if self.head_pose is not None:
                picture = plot_head_pose(picture, self.landmarks[keep], self.head_pose[keep])
        return picture if picture is not self.image else self.image.copy()

    def _keypoint_layout(self) -> tuple[list[str], list[list[int]]]:
        from sightkit.data.coco import COCO_KEYPOINT_NAMES, COCO_SKELETON

        assert self.keypoints is not None
        k = self.keypoints.shape[1]
        names = self.extra.get("keypoint_names") or (list(COCO_KEYPOINT_NAMES) if k == 17 else [""] * k)
        skeleton = self.extra.get("skeleton") or ([list(p) for p in COCO_SKELETON] if k == 17 else [])
        return list(names), [list(p) for p in skeleton]

    def save(self, path: str | Path, conf: float | None = None) -> Path:
        """Save :meth:`plot` as a picture; returns the file written.

        Args:
            path: a file (``.jpg``, ``.png``, ...), or a folder that gets ``<stem>.jpg``
                (``<stem>_<frame>.jpg`` for a video frame), ``stem`` from :attr:`path`.
        """
        from sightkit.tasks.draw import save_picture

        target = Path(path)
        if target.suffix.lower() not in PICTURE_SUFFIXES:
            source = urlparse(self.path).path if "://" in self.path else self.path
            stem = Path(source).stem or "image"
            target = target / (f"{stem}_{self.frame}.jpg" if self.frame is not None else f"{stem}.jpg")
        save_picture(self.plot(conf), target)
        return target

    # ------------------------------------------------------------------ records

    def to_dict(self) -> dict[str, Any]:
        """The predictions as JSON-ready lists, rounded (pixels to 2 decimals, scores to 4).

        Keys: ``path`` and ``frame``, then those of the fields present: ``boxes``
        (``[[x1, y1, x2, y2], ...]``), ``scores``, ``labels``, ``names`` (one per instance),
        ``keypoints`` (``[[[x, y, score], ...K], ...N]``), ``landmarks`` (``[[[x, y], ...5], ...]``),
        ``head_pose`` (``[[yaw, pitch, roll], ...]`` radians, 4 decimals, ``null`` for NaN),
        ``embeddings``, and for a class map ``masks``: one record per class present,
        ``{"label", "name", "size": [H, W], "counts"}`` with COCO's compressed RLE
        (``pycocotools.mask.decode`` reads it back).
        """
        record: dict[str, Any] = {"path": self.path, "frame": self.frame}
        if self.boxes is not None:
            record["boxes"] = _rounded(self.boxes, PIXEL_DECIMALS)
        if self.scores is not None:
            record["scores"] = _rounded(self.scores, SCORE_DECIMALS)
        if self.labels is not None:
            record["labels"] = self.labels.tolist()
            record["names"] = self.instance_names()
        if self.keypoints is not None:
            points = np.concatenate(
                [np.round(self.keypoints[..., :2].astype(np.float64), PIXEL_DECIMALS),
                 np.round(self.keypoints[..., 2:].astype(np.float64), SCORE_DECIMALS)], axis=-1,
            )  # fmt: skip
            record["keypoints"] = points.tolist()
        if self.landmarks is not None:
            record["landmarks"] = _rounded(self.landmarks, PIXEL_DECIMALS)
        if self.head_pose is not None:
            angles = np.round(self.head_pose.astype(np.float64), SCORE_DECIMALS)
            record["head_pose"] = [[None if np.isnan(a) else a for a in face] for face in angles.tolist()]
        if self.embeddings is not None:
            record["embeddings"] = _rounded(self.embeddings, EMBEDDING_DECIMALS)
        if self.masks is not None:
            record["masks"] = [{"label": label, "name": self._name(label), **rle} for label, rle in self._class_rles()]
        return record

    def to_json(self) -> str:
        """``json.dumps(self.to_dict())``."""
        return json.dumps(self.to_dict())

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results records for ``image_id``: one per instance with ``bbox`` ``[x, y, w, h]``,
        ``score`` and ``category_id`` (``category_ids[label]``, the label when ``category_ids``
        is ``None``), plus flattened ``keypoints`` ``[x1, y1, s1, ...]`` for poses (the score
        in the visibility slot, as COCO's evaluation ignores it); for a class map, one record
        per class present with its ``segmentation`` RLE and score 1 (COCO stuff results)."""
        records: list[dict[str, Any]] = []
        if self.boxes is not None:
            xywh = self.boxes.astype(np.float64).copy()
            xywh[:, 2:] -= xywh[:, :2]
            for i, box in enumerate(np.round(xywh, PIXEL_DECIMALS).tolist()):
                label = int(self.labels[i]) if self.labels is not None else 0
                score = float(self.scores[i]) if self.scores is not None else 1.0
                record = {
                    "image_id": image_id,
                    "category_id": self._category_id(label),
                    "bbox": box,
                    "score": round(score, SCORE_DECIMALS),
                }
                if self.keypoints is not None:
                    record["keypoints"] = [
                        round(float(v), SCORE_DECIMALS if j % 3 == 2 else PIXEL_DECIMALS)
                        for j, v in enumerate(self.keypoints[i].reshape(-1).tolist())
                    ]
                records.append(record)
        if self.masks is not None:
            for label, rle in self._class_rles():
                records.append(
                    {"image_id": image_id, "category_id": self._category_id(label), "segmentation": rle, "score": 1.0}
                )
        return records

    def _category_id(self, label: int) -> int:
        return self.category_ids[label] if self.category_ids is not None else label

    def _class_rles(self) -> list[tuple[int, dict[str, Any]]]:
        assert self.masks is not None
        return [(label, encode_rle(self.masks == label)) for label in np.unique(self.masks).tolist()]


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed run-length encoding of a binary ``[H, W]`` mask:
    ``{"size": [H, W], "counts": str}`` (column-major runs, starting with background), as
    ``pycocotools.mask.encode`` writes it with ``counts`` decoded to text for JSON."""
    from faster_coco_eval.core import mask as coco_mask

    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W]; got shape {tuple(mask.shape)}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _rounded(values: np.ndarray, decimals: int) -> list[Any]:
    # float64 first: float32 values rounded in float32 print as 12.350000381469727.
    return np.round(values.astype(np.float64), decimals).tolist()
