"""Pascal VOC reader and VOC -> COCO converter, on XML files written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sightkit.data import check_dataset, read_voc, voc_to_coco


def voc_xml(filename: str, size: tuple[int, int] | None, objects: list[dict]) -> str:
    size_xml = (
        "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    )
    parts = []
    for obj in objects:
        flags = "".join(f"<{k}>{obj[k]}</{k}>" for k in ("difficult", "truncated", "occluded") if k in obj)
        box = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), obj["box"], strict=True))
        parts.append(
            f"<object><name>{obj['name']}</name><pose>Unspecified</pose>{flags}<bndbox>{box}</bndbox></object>"
        )
    return f"<annotation><folder>VOC</folder><filename>{filename}</filename>{size_xml}{''.join(parts)}</annotation>"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_read_voc_fields_and_one_based_conversion(tmp_path: Path) -> None:
    objects = [
        {"name": "dog", "box": (1, 2, 10, 20), "difficult": 1, "truncated": 0},
        {"name": "cat", "box": (5, 5, 5, 5), "truncated": 1, "occluded": 1},  # a one-pixel box
    ]
    path = write(tmp_path / "a.xml", voc_xml("a.jpg", (30, 40), objects))
    ann = read_voc(path)
    assert (ann.path, ann.filename, ann.width, ann.height, ann.depth) == (path, "a.jpg", 30, 40, 3)
    dog, cat = ann.objects
    # 1-based inclusive pixels 1..10 are the continuous span [0, 10].
    assert (dog.name, dog.box, dog.difficult, dog.truncated, dog.occluded) == (
        "dog",
        (0, 1, 10, 20),
        True,
        False,
        False,
    )
    assert (cat.name, cat.box, cat.difficult, cat.truncated, cat.occluded) == ("cat", (4, 4, 5, 5), False, True, True)

    raw = read_voc(path, one_based=False)
    assert raw.objects[0].box == (1, 2, 10, 20)


def test_read_voc_accepts_float_coordinates_and_no_objects(tmp_path: Path) -> None:
    path = write(tmp_path / "f.xml", voc_xml("f.png", (8, 6), [{"name": "x", "box": ("1.5", "2", "7.25", "6.0")}]))
    assert read_voc(path).objects[0].box == (0.5, 1.0, 7.25, 6.0)
    empty = read_voc(write(tmp_path / "e.xml", voc_xml("e.png", (8, 6), [])))
    assert empty.objects == ()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<annotation><filename>a.jpg</filename>", "malformed VOC XML"),
        ("<notvoc><filename>a.jpg</filename></notvoc>", "expected a VOC <annotation> root element, got <notvoc>"),
        ("<annotation><size><width>3</width></size></annotation>", "missing <filename>"),
        (voc_xml("a.jpg", (3, 3), [{"name": "x", "box": (1, 1, 2, 2)}]).replace("<ymax>2</ymax>", ""), "object 0"),
        (voc_xml("a.jpg", (3, 3), [{"name": "x", "box": (1, 1, "two", 2)}]), "<xmax> must be a number, got 'two'"),
        (voc_xml("a.jpg", (3, 3), [{"name": "x", "box": (3, 1, 2, 2)}]), "inverted box xmin=3.0"),
        (voc_xml("a.jpg", (3, 3), [{"name": "x", "box": (1, 1, 2, 2), "difficult": 7}]), "<difficult> must be 0 or 1"),
        (voc_xml("a.jpg", ("3px", 3), []), "<size/width> must be an integer, got '3px'"),
    ],
)
def test_read_voc_errors_name_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path / "bad.xml", text)
    with pytest.raises(ValueError, match=match) as info:
        read_voc(path)
    assert str(path) in str(info.value)


def test_read_voc_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.xml"):
        read_voc(tmp_path / "nope.xml")


def make_devkit(root: Path) -> None:
    """A VOC devkit folder: 3 images, one without objects, classes written in unsorted order."""
    write(
        root / "Annotations" / "002.xml",
        voc_xml(
            "002.jpg",
            (50, 40),
            [
                {"name": "dog", "box": (1, 1, 50, 40), "difficult": 0, "truncated": 1},  # the whole image
                {"name": "cat", "box": (11, 21, 20, 30), "difficult": 1},
            ],
        ),
    )
    write(root / "Annotations" / "001.xml", voc_xml("001.jpg", (20, 10), [{"name": "dog", "box": (2, 3, 5, 9)}]))
    write(root / "Annotations" / "003.xml", voc_xml("003.jpg", (16, 16), []))
    write(root / "ImageSets" / "Main" / "val.txt", "003\n002\n")
    for name, size in (("001.jpg", (20, 10)), ("002.jpg", (50, 40)), ("003.jpg", (16, 16))):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (90, 120, 30)).save(root / "JPEGImages" / name)


def test_voc_to_coco_devkit_layout(tmp_path: Path) -> None:
    make_devkit(tmp_path / "VOC")
    out = tmp_path / "coco" / "annotations" / "instances.json"
    coco = voc_to_coco(tmp_path / "VOC", out)
    assert json.loads(out.read_text()) == coco

    assert coco["categories"] == [
        {"id": 1, "name": "cat", "supercategory": "none"},
        {"id": 2, "name": "dog", "supercategory": "none"},
    ]
    assert coco["images"] == [
        {"id": 1, "file_name": "001.jpg", "width": 20, "height": 10},
        {"id": 2, "file_name": "002.jpg", "width": 50, "height": 40},
        {"id": 3, "file_name": "003.jpg", "width": 16, "height": 16},
    ]
    flags = {"iscrowd": 0, "ignore": 0, "difficult": 0, "truncated": 0}
    assert coco["annotations"] == [
        # xmin=2..xmax=5 (1-based, inclusive) is x in [1, 5]: width 4; y in [2, 9]: height 7.
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [1.0, 2.0, 4.0, 7.0], "area": 28.0, **flags},
        {
            "id": 2,
            "image_id": 2,
            "category_id": 2,
            "bbox": [0.0, 0.0, 50.0, 40.0],
            "area": 2000.0,
            **flags,
            "truncated": 1,
        },
        {
            "id": 3,
            "image_id": 2,
            "category_id": 1,
            "bbox": [10.0, 20.0, 10.0, 10.0],
            "area": 100.0,
            **flags,
            "ignore": 1,
            "difficult": 1,
        },
    ]


def test_voc_to_coco_output_passes_check_dataset(tmp_path: Path) -> None:
    # The whole-image box (xmin=1, xmax=W) must land exactly on the image border, not one pixel outside.
    make_devkit(tmp_path / "VOC")
    voc_to_coco(tmp_path / "VOC", tmp_path / "VOC" / "instances.json")
    report = check_dataset(tmp_path / "VOC" / "instances.json", images=tmp_path / "VOC" / "JPEGImages", tolerance=0)
    assert report.problems == []
    assert (report.images, report.annotations) == (3, 3)


def test_voc_to_coco_image_set_and_fixed_categories(tmp_path: Path) -> None:
    make_devkit(tmp_path)
    coco = voc_to_coco(tmp_path, image_set="val", categories=["dog", "cat", "bird"])
    assert [image["file_name"] for image in coco["images"]] == ["003.jpg", "002.jpg"]
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "dog"), (2, "cat"), (3, "bird")]
    assert [(a["image_id"], a["category_id"]) for a in coco["annotations"]] == [(2, 1), (2, 2)]


def test_voc_to_coco_errors(tmp_path: Path) -> None:
    make_devkit(tmp_path)
    with pytest.raises(ValueError, match=r"002.xml: class 'cat' is not in categories \['dog'\]"):
        voc_to_coco(tmp_path, categories=["dog"])
    with pytest.raises(ValueError, match="categories must be distinct"):
        voc_to_coco(tmp_path, categories=["dog", "cat", "dog"])
    with pytest.raises(FileNotFoundError, match="image_set 'test'"):
        voc_to_coco(tmp_path, image_set="test")
    with pytest.raises(FileNotFoundError, match="VOC folder not found"):
        voc_to_coco(tmp_path / "missing")
    with pytest.raises(ValueError, match="root must contain VOC"):
        voc_to_coco(tmp_path / "JPEGImages")


def test_voc_to_coco_reads_missing_size_from_the_image(tmp_path: Path) -> None:
    # A flat folder: XML files next to their images, one XML without <size>.
    write(tmp_path / "a.xml", voc_xml("a.png", None, [{"name": "tree", "box": (1, 1, 3, 3)}]))
    Image.new("RGB", (7, 5)).save(tmp_path / "a.png")
    coco = voc_to_coco(tmp_path)
    assert coco["images"] == [{"id": 1, "file_name": "a.png", "width": 7, "height": 5}]

    write(tmp_path / "b.xml", voc_xml("b.png", None, []))
    with pytest.raises(FileNotFoundError, match=r"b\.xml: <size> is missing and the image is not found"):
        voc_to_coco(tmp_path)
