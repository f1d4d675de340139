"""The shapes dataset written to disk reads back as exactly what was drawn."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sightkit.data import CocoDetection, ShapesConfig, synthesize_shapes
from sightkit.data.synthetic.shapes import SHAPE_CLASSES, image_size, render_shapes

SEED = 3
CONFIG = ShapesConfig(images=4, seed=SEED, size=80, max_objects=5, val_fraction=0.25, progress=False)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    synthesize_shapes(CONFIG, out=str(out))
    return out


def _redraw(index: int):
    rng = np.random.default_rng([SEED, index])
    height, width = image_size(rng, CONFIG.size)
    return render_shapes(rng, height, width, CONFIG.max_objects)


def _datasets(root: Path) -> list[CocoDetection]:
    return [CocoDetection(root / "images", root / "annotations" / f"{s}.json", masks=True) for s in ("train", "val")]


def test_round_trip_images_masks_boxes_labels(shapes_dir: Path) -> None:
    train, val = _datasets(shapes_dir)
    assert len(train) == 3 and len(val) == 1
    assert train.category_map.names == SHAPE_CLASSES
    samples = [train[i] for i in range(3)] + [val[0]]
    for index, (image, target) in enumerate(samples):
        drawn_image, shapes = _redraw(index)
        assert target["image_id"] == index + 1
        assert torch.equal(image.as_subclass(torch.Tensor), torch.from_numpy(drawn_image).permute(2, 0, 1))
        assert target["labels"].tolist() == [s.label for s in shapes]
        masks = target["masks"].as_subclass(torch.Tensor).bool()
        assert torch.equal(masks, torch.from_numpy(np.stack([s.mask for s in shapes])))
        for mask, box in zip(masks, target["boxes"].as_subclass(torch.Tensor), strict=True):
            rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
            tight = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert box.tolist() == [float(v) for v in tight]
        assert target["area"].tolist() == masks.sum((1, 2)).float().tolist()


def test_visible_masks_are_disjoint_and_match_the_semantic_png(shapes_dir: Path) -> None:
    train, _ = _datasets(shapes_dir)
    for index in range(3):
        _, target = train[index]
        masks = target["masks"].as_subclass(torch.Tensor).bool()
        assert masks.sum(0).max() <= 1  # each pixel belongs to at most one visible shape
        semantic = torch.from_numpy(np.array(Image.open(shapes_dir / "masks" / f"{index:06d}.png")))
        expected = torch.zeros_like(semantic)
        for mask, label in zip(masks, target["labels"], strict=True):
            expected[mask] = label + 1
        assert torch.equal(semantic, expected)


def test_fully_covered_pixels_have_the_shape_colour(shapes_dir: Path) -> None:
    train, _ = _datasets(shapes_dir)
    checked = 0
    for index in range(3):
        image, _ = train[index]
        _, shapes = _redraw(index)
        height, width = image.shape[-2:]
        for k, shape in enumerate(shapes):
            alpha = np.zeros((height, width), dtype=np.float32)
            h, w = shape.coverage.alpha.shape
            alpha[shape.coverage.top : shape.coverage.top + h, shape.coverage.left : shape.coverage.left + w] = (
                shape.coverage.alpha
            )
            untouched = np.ones((height, width), dtype=bool)
            for later in shapes[k + 1 :]:
                lh, lw = later.coverage.alpha.shape
                region = untouched[
                    later.coverage.top : later.coverage.top + lh, later.coverage.left : later.coverage.left + lw
                ]
                region &= later.coverage.alpha == 0
            solid = (alpha == 1.0) & untouched
            assert solid.sum() > 0.3 * shape.mask.sum()
            pixels = image.as_subclass(torch.Tensor).permute(1, 2, 0)[torch.from_numpy(solid)]
            assert (pixels == torch.from_numpy(shape.color).to(torch.uint8)).all()
            checked += 1
    assert checked >= 3


def test_image_i_depends_only_on_seed_and_i(tmp_path: Path) -> None:
    synthesize_shapes(CONFIG, out=str(tmp_path / "a"), images=2)
    synthesize_shapes(CONFIG, out=str(tmp_path / "b"), images=3)
    synthesize_shapes(CONFIG, out=str(tmp_path / "c"), images=2, seed=SEED + 1)

    def read(folder: str, name: str) -> np.ndarray:
        return np.asarray(Image.open(tmp_path / folder / "images" / name))

    for name in ("000000.png", "000001.png"):
        assert np.array_equal(read("a", name), read("b", name))
    assert not np.array_equal(read("a", "000000.png"), read("c", "000000.png"))


def test_jpeg_output_and_bad_settings(tmp_path: Path) -> None:
    paths = synthesize_shapes(CONFIG, out=str(tmp_path), images=1, val_fraction=0.0, format="jpg")
    dataset = CocoDetection(paths["images"], paths["train"])
    assert len(dataset) == 1 and dataset.records[0].file_name == "000000.jpg"
    assert dataset[0][0].shape[0] == 3
    with pytest.raises(ValueError, match="images must be >= 1, got 0"):
        synthesize_shapes(CONFIG, out=str(tmp_path), images=0)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        synthesize_shapes(CONFIG, out=str(tmp_path), val_fraction=1.0)
    with pytest.raises(ValueError, match="format must be one of"):
        synthesize_shapes(CONFIG, out=str(tmp_path), format="gif")
    with pytest.raises(TypeError, match="colour"):
        synthesize_shapes(CONFIG, out=str(tmp_path), colour=1)


def test_classes_objects_and_radius_options(tmp_path: Path) -> None:
    """Two classes, exactly two shapes of circumradius 0.2 x the shorter side on a plain
    background: the categories, counts and box sizes follow from the settings by hand."""
    paths = synthesize_shapes(
        CONFIG,
        out=str(tmp_path),
        images=6,
        val_fraction=0.0,
        classes=2,
        min_objects=2,
        max_objects=2,
        min_radius=0.2,
        max_radius=0.2,
        background="plain",
    )
    dataset = CocoDetection(paths["images"], paths["train"])
    assert dataset.category_map.names == SHAPE_CLASSES[:2]
    for index in range(len(dataset)):
        image, target = dataset[index]
        height, width = image.shape[-2:]
        radius = 0.2 * min(height, width)
        assert len(target["labels"]) == 2 and set(target["labels"].tolist()) <= {0, 1}
        boxes = target["boxes"].as_subclass(torch.Tensor)
        sides = boxes[:, 2:] - boxes[:, :2]
        # A shape of circumradius r spans at most 2r, plus a pixel at each end for the pixel grid.
        assert (sides <= 2 * radius + 2).all()
        # The last one painted is whole: a circle spans 2r, a square at least its side r * sqrt(2).
        assert sides[-1].max() >= radius * math.sqrt(2) - 1


def test_plain_background_is_one_colour_with_fine_grain() -> None:
    rng = np.random.default_rng(0)
    image, shapes = render_shapes(rng, 60, 80, 1, background="plain")
    outside = np.ones((60, 80), dtype=bool)
    for shape in shapes:
        h, w = shape.coverage.alpha.shape
        outside[shape.coverage.top : shape.coverage.top + h, shape.coverage.left : shape.coverage.left + w] &= (
            shape.coverage.alpha == 0
        )
    # Grain of standard deviation 3 on a flat colour (rounding and clipping aside); textured ones vary far more.
    assert 2.5 < image[outside].astype(np.float32).std(axis=0).max() < 3.5


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"classes": 0}, r"classes must be in 1\.\.5, got 0"),
        ({"classes": 6}, r"classes must be in 1\.\.5, got 6"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects <= max_objects, got min_objects=3, max_objects=2"),
        ({"min_objects": 0}, "1 <= min_objects"),
        ({"min_radius": 0.3, "max_radius": 0.2}, "min_radius <= max_radius"),
        ({"max_radius": 0.6}, r"max_radius <= 0\.5"),
        ({"background": "noise"}, "background must be one of textured, plain, got 'noise'"),
        ({"size": 8}, "size must be >= 16, got 8"),
    ],
)
def test_bad_options_name_the_setting(tmp_path: Path, settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthesize_shapes(CONFIG, out=str(tmp_path), **settings)
