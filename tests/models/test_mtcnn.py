"""MTCNN: the cascade's pieces by hand, and with the real weights from the facenet-pytorch
wheel (skipped when it is absent) the astronaut's face, as facenet-pytorch's own port finds it."""

import os
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from sightkit.models import MTCNN, load_mtcnn
from sightkit.models.mtcnn import ONet, PNet, RNet, _nms_min, _regress, _square
from sightkit.ops import box_iou

WHEEL = Path(os.environ.get("SIGHTKIT_FACENET_WHEEL", Path(__file__).parents[2] / "runs/weights"))
WHEEL = WHEEL / "facenet_pytorch-2.6.0-py3-none-any.whl" if WHEEL.is_dir() or not WHEEL.suffix else WHEEL
needs_wheel = pytest.mark.skipif(
    not WHEEL.is_file(),
    reason=f"MTCNN's weights come from the facenet-pytorch wheel, absent at {WHEEL}; download it with "
    "`pip download --no-deps facenet-pytorch==2.6.0 -d runs/weights` (or set SIGHTKIT_FACENET_WHEEL)",
)


def test_each_network_sees_its_window_size_as_one_cell() -> None:
    offsets, probability = PNet()(torch.zeros(2, 3, 12, 12))
    assert offsets.shape == (2, 4, 1, 1) and probability.shape == (2, 1, 1)
    # 12 more pixels move P-Net's window by 6 cells: stride 2.
    assert PNet()(torch.zeros(1, 3, 24, 24))[1].shape == (1, 7, 7)
    assert RNet()(torch.zeros(3, 3, 24, 24))[0].shape == (3, 4)
    offsets, points, probability = ONet()(torch.zeros(3, 3, 48, 48))
    assert points.shape == (3, 10) and ((probability >= 0) & (probability <= 1)).all()


def test_box_helpers_by_hand() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # 20 wide, 40 high
    torch.testing.assert_close(
        _regress(boxes, torch.tensor([[0.1, -0.25, 0.5, 0.0]])), torch.tensor([[12.0, 10.0, 40.0, 60.0]])
    )
    torch.testing.assert_close(_square(boxes), torch.tensor([[0.0, 20.0, 40.0, 60.0]]))


def test_min_nms_drops_a_box_inside_a_better_one() -> None:
    # The small box lies inside the big one: IoU 0.04 (standard NMS keeps it), overlap/min-area 1.
    boxes = torch.tensor(
        [[0.0, 0.0, 50.0, 50.0], [10.0, 10.0, 20.0, 20.0], [60.0, 0.0, 70.0, 10.0], [12.0, 12.0, 18.0, 18.0]]
    )
    scores = torch.tensor([0.9, 0.95, 0.5, 0.8])
    groups = torch.tensor([0, 0, 0, 1])  # the last is in another image: untouched
    assert _nms_min(boxes, scores, groups, 0.7).tolist() == [1, 3, 2]


def test_missing_wheel_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"pip download --no-deps facenet-pytorch==2\.6\.0 -d runs/weights"):
        load_mtcnn(tmp_path)
    with pytest.raises(ValueError, match=r"images must be a tensor \[B, 3, H, W\]"):
        MTCNN().detect(torch.zeros(3, 8, 8))


def _facenet_reference(tmp_path: Path):
    """facenet-pytorch's MTCNN, imported from the wheel's files without its package __init__
    (which needs requests) and without installing it."""
    with zipfile.ZipFile(WHEEL) as archive:
        archive.extractall(tmp_path)
    package = types.ModuleType("facenet_pytorch")
    package.__path__ = [str(tmp_path / "facenet_pytorch")]
    saved = {k: v for k, v in sys.modules.items() if k.startswith("facenet_pytorch")}
    sys.modules["facenet_pytorch"] = package
    try:
        from facenet_pytorch.models.mtcnn import MTCNN as Reference

        return Reference
    finally:
        for key in [k for k in sys.modules if k.startswith("facenet_pytorch")]:
            del sys.modules[key]
        sys.modules.update(saved)


@needs_wheel
@pytest.mark.slow
def test_finds_the_astronauts_face_as_facenet_pytorch_does(tmp_path: Path) -> None:
    data = pytest.importorskip("skimage.data")
    photo = data.astronaut()  # 512 x 512 RGB, one face
    model = load_mtcnn(WHEEL, min_face=40)
    (found,) = model.detect(torch.from_numpy(photo).permute(2, 0, 1)[None])
    assert found["boxes"].shape == (1, 4) and found["scores"][0] > 0.99
    reference = _facenet_reference(tmp_path)(keep_all=True, min_face_size=40, device="cpu")
    boxes, _, landmarks = reference.detect(photo, landmarks=True)
    expected_box = torch.tensor(boxes[0].astype(float), dtype=torch.float32)[None]
    assert box_iou(found["boxes"], expected_box)[0, 0] > 0.9
    # facenet-pytorch keeps MATLAB's 1-based pixels (about 1 px off ours); landmarks agree within 3 px.
    expected_landmarks = torch.tensor(landmarks[0].astype(float), dtype=torch.float32)
    assert (found["landmarks"][0] - expected_landmarks).norm(dim=1).max() < 3.0
    left_eye, right_eye, nose, mouth_left, mouth_right = found["landmarks"][0]
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
