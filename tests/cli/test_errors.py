"""Every CLI failure is one line on stderr that names the setting, with exit status 2, never a
traceback; user strings are printed as text, not read as Rich markup; output paths are checked
before any work starts. Each case was a traceback, a mangled path or a late failure before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner, Result

from sightkit.cli.app import app
from sightkit.cli.tasks import guarded
from sightkit.data.coco import ImageReadError
from sightkit.data.sources import SourceError
from sightkit.engine.distributed import DistributedError
from sightkit.outputs import check_output
from sightkit.weights import LayoutMismatchError, WeightsUnavailableError
from tests.tasks.tiny import tiny_weights


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights("detr_r18_tiny", tmp_path_factory.mktemp("w") / "detr.safetensors")[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sightkit.data.synthetic.shapes import synthesize_shapes

    out = tmp_path_factory.mktemp("data") / "shapes"
    synthesize_shapes(out=str(out), images=4, size=48, val_fraction=0.5, progress=False)
    return out


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """A regular file: nothing can be created under it, by root either."""
    path = tmp_path / "a_file"
    path.write_text("x")
    return path


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Default outputs (runs/...) land in the test's folder, never in the repository.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIGHTKIT_DEBUG", raising=False)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result: Result, *needles: str) -> str:
    """Assert exit status 2 and exactly one line on stderr, holding every needle; return it."""
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- markup


def test_brackets_in_a_setting_are_printed_not_read_as_markup(tmp_path: Path) -> None:
    # "[/x]" is a closing tag to Rich: the error message itself crashed the CLI (MarkupError).
    result = invoke("train", "detect", "model=detr_r18_tiny", "data=data/[/x]", f"out={tmp_path / 'run'}")
    one_line(result, "error: data='data/[/x]' does not exist")


def test_a_file_named_with_brackets_keeps_its_name(detector: Path, tmp_path: Path) -> None:
    # "[copy]" is a style tag to Rich: "photo [copy].jpg" was reported as "photo .jpg".
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(photos / "good.png")
    (photos / "photo [copy].jpg").write_bytes(b"not a jpeg")
    result = invoke("predict", "detect", f"weights={detector}", f"source={photos}", f"out={tmp_path / 'p'}")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert f"skipped {photos / 'photo [copy].jpg'}: " in result.output
    assert "skipped 1 unreadable" in result.output  # a folder keeps on_error=skip's count

    single = invoke("predict", "detect", f"weights={detector}", f"source={photos / 'photo [copy].jpg'}")
    one_line(single, f"source='{photos / 'photo [copy].jpg'}' is not a readable image or video")


def test_predict_on_a_text_file_is_one_line(detector: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    result = invoke("predict", "detect", f"weights={detector}", f"source={notes}", f"out={tmp_path / 'p'}")
    one_line(result, f"source={str(notes)!r} is not a readable image or video")


# ----------------------------------------------------------------------------- outputs


def test_train_out_under_a_file_or_a_device_is_refused_before_training(shapes: Path, a_file: Path) -> None:
    base = ["train", "detect", "model=detr_r18_tiny", f"data={shapes}", "steps=1", "epochs=0", "batch=2", "imgsz=48"]
    one_line(invoke(*base, f"out={a_file / 'run'}"), f"out={str(a_file / 'run')!r} cannot be written", "a file")
    # Writes to /dev/full fail with ENOSPC: the run would have died at its first checkpoint.
    one_line(invoke(*base, "out=/dev/full"), "out='/dev/full' is a device, not a folder")


def test_predict_out_unwritable_is_refused_before_loading(tmp_path: Path, a_file: Path) -> None:
    # The weights do not exist: the output is checked first, before anything is loaded.
    weights, source = tmp_path / "none.safetensors", tmp_path / "none.png"
    one_line(invoke("predict", "detect", f"weights={weights}", f"source={source}", f"out={a_file / 'p'}"), "out=")
    # /proc refuses new files even to root, whatever its modes say.
    result = invoke("predict", "detect", f"weights={weights}", f"source={source}", "out=/proc/sightkit-test/p")
    one_line(result, "out='/proc/sightkit-test/p' cannot be written: /proc refuses new files")


@pytest.mark.parametrize("where", ["under_file", "proc"])
def test_data_synth_unwritable_out_is_one_line(where: str, a_file: Path) -> None:
    out = a_file / "shapes" if where == "under_file" else Path("/proc/sightkit-test/shapes")
    one_line(invoke("data", "synth", "shapes", f"out={out}", "images=2", "progress=false"), f"out={str(out)!r}")


def test_data_convert_and_weights_import_check_out_first(shapes: Path, a_file: Path, tmp_path: Path) -> None:
    one_line(invoke("data", "convert", shapes, f"out={a_file / 'yolo'}", "format=yolo"), "out=")
    result = invoke("weights", "import", tmp_path / "none.pth", f"out={a_file / 'w.safetensors'}")
    one_line(result, f"out={str(a_file / 'w.safetensors')!r} cannot be written")


def test_export_out_unwritable_is_found_before_the_export(tmp_path: Path) -> None:
    # As root, os.access said yes to /proc: the export ran, then its log could not be opened.
    result = invoke("export", "onnx", f"weights={tmp_path / 'none.safetensors'}", "out=/proc/sightkit-test.onnx")
    one_line(result, "out='/proc/sightkit-test.onnx' cannot be written")


def test_serve_gallery_and_port_are_checked_before_the_models_load(tmp_path: Path, a_file: Path) -> None:
    # The face weights do not exist: the gallery is refused first, not after loading them.
    weights = tmp_path / "none.safetensors"
    gallery = a_file / "g.db"
    one_line(invoke("serve", f"face_weights={weights}", f"gallery={gallery}"), f"gallery={str(gallery)!r}")
    one_line(invoke("serve", f"weights={weights}", "port=99999"), "port must be a TCP port number", "99999")


def test_check_output(tmp_path: Path, a_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_output(tmp_path / "new" / "deeper", "out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created
    assert check_output(a_file, "out", "file") == a_file and a_file.read_text() == "x"  # opened, not changed
    with pytest.raises(ValueError, match=r"out='.*a_file' is a file, not a folder"):
        check_output(a_file, "out")
    with pytest.raises(ValueError, match=r"out='.*' is a folder; give the file to write"):
        check_output(tmp_path, "out", "file")
    with pytest.raises(ValueError, match=r"gallery='/dev/full' is a device, not a regular file"):
        check_output("/dev/full", "gallery", "file")
    with pytest.raises(ValueError, match="out= is empty"):
        check_output("", "out")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sightkit")]  # no probe left behind

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    # What chmod 555 does to anyone but root (the tests run as root here).
    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(ValueError, match=r"cannot be written: .* refuses new files \(Permission denied\)"):
        check_output(tmp_path / "run", "out")


# ----------------------------------------------------------------------------- the handler


@pytest.mark.parametrize(
    "error",
    [
        DistributedError("rank 1 did not answer within ddp_timeout=600 s"),
        ImageReadError("data/photo [copy].jpg", "truncated: the JPEG has no end-of-image marker"),
        SourceError("photo [copy].jpg", "not a readable image"),
        PermissionError(13, "Permission denied", "runs/[/x]"),
        OSError(28, "No space left on device"),
        WeightsUnavailableError("hf:org/name is not in the cache and HF_HUB_OFFLINE=1"),
        LayoutMismatchError("the checkpoint's layout is DETR's, model=vfnet_r18 expects VarifocalNet's"),
        TypeError("detect predictors take the options conf, precision, top_k; got colour"),
        ValueError("resume: the config differs from the run's:\n  lr: 0.001 -> 0.01\n  batch: 8 -> 4"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_user_error_is_one_plain_line(error: Exception, capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> None:
        raise error

    with pytest.raises(typer.Exit) as exit_info:
        guarded(fail)
    assert exit_info.value.exit_code == 2
    lines = capsys.readouterr().err.splitlines()
    expected = "; ".join(line.strip() for line in str(error).splitlines())
    assert lines == [f"error: {expected}"]


def test_sightkit_debug_keeps_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTKIT_DEBUG", "1")
    result = invoke("data", "synth", "shapes", "out=/proc/sightkit-test/x", "images=2")
    assert isinstance(result.exception, ValueError) and "/proc refuses new files" in str(result.exception)


def test_a_programming_error_is_not_hidden() -> None:
    def bug() -> None:
        raise KeyError("boxes")

    with pytest.raises(KeyError):
        guarded(bug)


# ----------------------------------------------------------------------------- max_pixels


def test_predict_max_pixels(detector: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(photos / "small.png")  # 2,000 pixels
    Image.fromarray(np.zeros((60, 100, 3), np.uint8)).save(photos / "large.png")  # 6,000 pixels
    out = tmp_path / "p"
    result = invoke("predict", "detect", f"weights={detector}", f"source={photos}", f"out={out}", "max_pixels=5000")
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable" in result.output and "more than max_pixels=5,000" in result.output
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 1
    single = invoke("predict", "detect", f"weights={detector}", f"source={photos / 'large.png'}", "max_pixels=5000")
    one_line(single, "is not a readable image or video", "100x60 = 6,000 pixels, more than max_pixels=5,000")
    everything = invoke("predict", "detect", f"weights={detector}", f"source={photos}", f"out={out}", "max_pixels=0")
    assert everything.exit_code == 0 and "skipped" not in everything.output, everything.output


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sightkit.data.synthetic.faces import synthesize_faces

    out = tmp_path_factory.mktemp("data") / "faces"
    synthesize_faces(
        out=str(out), images=2, size=64, identities=2, test_identities=2, per_identity=2, crop=32, folds=1,
        pairs_per_fold=1, val_fraction=0.5, progress=False,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sightkit.data.synthetic.people import synthesize_people

    out = tmp_path_factory.mktemp("data") / "people"
    synthesize_people(out=str(out), images=4, size=96, max_people=2, val_fraction=0.5, progress=False)
    return out


@pytest.mark.parametrize(
    ("task_name", "model", "dataset", "folder"),
    [
        ("detect", "detr_r18_tiny", "shapes", ""),
        ("segment", "unet_r18_tiny", "shapes", ""),
        ("face_detect", "face_detector_tiny", "faces", ""),
        ("face", "iresnet_tiny", "faces", "recognition"),
        ("pose", "rle_r18_tiny", "people", ""),
    ],
)
def test_training_datasets_read_with_the_configs_max_pixels(
    task_name: str,
    model: str,
    dataset: str,
    folder: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sightkit.config import build_config
    from sightkit.tasks.registry import get_task

    task = get_task(task_name)
    keys = [f"data={request.getfixturevalue(dataset) / folder}", f"model={model}"]
    parts = task.training_parts(build_config(task.train_config, [*keys, "max_pixels=100"]))
    for split in (parts.train_set, parts.val_set):
        with pytest.raises(ImageReadError, match="more than max_pixels=100 "):
            split[0]
    # No limit reads what Pillow's own limit (the default of read_image) would refuse.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    unlimited = task.training_parts(build_config(task.train_config, [*keys, "max_pixels=0"]))
    for split in (unlimited.train_set, unlimited.val_set):
        assert split[0][0].shape[0] == 3


def test_data_check_shows_file_names_as_text(tmp_path: Path) -> None:
    import json

    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    coco = {
        "images": [{"id": 1, "file_name": "photo [copy].png", "width": 10, "height": 10}],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "annotations" / "train.json").write_text(json.dumps(coco))
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path)], env={"COLUMNS": "250"})
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "photo [copy].png" in result.output


def test_face_enroll_and_identify_check_out_first(tmp_path: Path, a_file: Path) -> None:
    # Neither the folder nor the weights exist: the output is refused first, before any embedding.
    gallery = a_file / "gallery.safetensors"
    one_line(invoke("face", "enroll", tmp_path / "people", "weights=none.safetensors", f"out={gallery}"), "out=")
    result = invoke("face", "identify", tmp_path / "face.png", "gallery=g.safetensors", "out=/proc/sightkit-test")
    one_line(result, "out='/proc/sightkit-test' cannot be written")


def test_written_paths_are_printed_as_they_are(detector: Path, tmp_path: Path) -> None:
    # "[x]" and "[1]" were read as style tags and vanished from the "wrote ... in PATH" lines.
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(photo)
    out = tmp_path / "runs [x]"
    runner = CliRunner(env={"COLUMNS": "1000"})  # no wrapping inside the paths
    result = runner.invoke(app, ["predict", "detect", f"weights={detector}", f"source={photo}", f"out={out}"])
    assert result.exit_code == 0 and f"in {out}\n" in result.output, result.output
    model = out / "m [1].torchscript"
    result = runner.invoke(app, ["export", "torchscript", f"weights={detector}", f"out={model}", "check=false"])
    assert result.exit_code == 0 and f"to {model} (" in result.output, result.output


def test_resume_from_an_empty_checkpoint_is_one_line(shapes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    base = ["train", "detect", "model=detr_r18_tiny", f"data={shapes}", f"out={run}", "steps=1", "epochs=0", "batch=2"]
    one_line(invoke(*base, "imgsz=48", "resume=true", "exist_ok=true"), f"{run / 'last.pt'}", "empty (0 bytes)")


def test_face_commands_print_names_as_text(tmp_path: Path) -> None:
    _, weights = tiny_weights("iresnet_tiny", tmp_path / "face.safetensors")
    people = tmp_path / "people [2]"
    rng = np.random.default_rng(0)
    for name in ("Ann [x]", "Bob"):
        (people / name).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(people / name / f"{k}.png")
    gallery = people / "gallery.safetensors"
    runner = CliRunner(env={"COLUMNS": "1000"})  # no wrapping inside the names
    enrolled = runner.invoke(app, ["face", "enroll", str(people), f"weights={weights}", "min_sharpness=0"])
    assert enrolled.exit_code == 0 and f"into {gallery}\n" in enrolled.output, enrolled.output
    image = people / "Ann [x]" / "0.png"
    found = runner.invoke(app, ["face", "identify", str(image), f"gallery={gallery}", "threshold=-1"])
    assert found.exit_code == 0 and "Ann [x]" in found.output, found.output


def test_eval_checks_its_default_folder_before_evaluating(
    detector: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import tempfile

    make_temporary = tempfile.mkstemp

    def refuse_next_to_the_weights(*args: object, dir: str | Path, **kwargs: object) -> tuple[int, str]:
        if Path(dir) == detector.parent:  # as chmod 555 does to anyone but root
            raise PermissionError(13, "Permission denied")
        return make_temporary(*args, dir=dir, **kwargs)

    # The shapes with the tiny detector's categories (ids 1 and 7).
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    (data / "images").symlink_to(shapes / "images")
    coco = json.loads((shapes / "annotations" / "val.json").read_text())
    coco["categories"] = [{"id": 1, "name": "person"}, {"id": 7, "name": "ball"}]
    coco["annotations"] = [{**annotation, "category_id": 1} for annotation in coco["annotations"]]
    (data / "annotations" / "val.json").write_text(json.dumps(coco))
    monkeypatch.setattr(tempfile, "mkstemp", refuse_next_to_the_weights)
    result = invoke("eval", "detect", f"weights={detector}", f"data={data}")
    one_line(result, f"out='{detector.parent}/eval_", "cannot be written", "refuses new files (Permission denied)")
