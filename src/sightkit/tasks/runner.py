"""One runner for every task: ``train``, ``evaluate`` and ``predict`` read what the task
declares in the registry (:mod:`sightkit.tasks.registry`) and do the rest the same way.

- ``train(config)``: seeds the model's initialisation, asks the task for its
  :class:`~sightkit.tasks.registry.TrainingParts` and runs :class:`~sightkit.engine.Trainer`.
- ``evaluate(config)``: loads the weights into the task's predictor, runs the task's
  :class:`~sightkit.tasks.registry.EvalPlan` over a DataLoader, writes ``metrics.json`` (and the
  task's own files) and prints the metrics table.
- ``predict(config)``: calls the predictor on ``source`` (any kind :func:`sightkit.load`'s
  predictors take), writes one JSON line per image or frame (``predictions.jsonl``, each line
  ``Results.to_json()``), the pictures (an annotated video for a video source) and, for tasks
  with boxes, a COCO results JSON (``predictions.json``) that ``predict pose boxes=`` and
  ``eval pose boxes=`` read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text
from torch.utils.data import DataLoader

from sightkit._api import export
from sightkit.engine.distributed import init_distributed, is_main_process
from sightkit.engine.precision import autocast_context, check_precision
from sightkit.engine.trainer import Trainer
from sightkit.outputs import check_output
from sightkit.predictor import Predictor, resolve_device, weights_file
from sightkit.tasks.common import read_metadata
from sightkit.tasks.registry import Task, get_task, metadata_task, task_of_config

#: Where ``predict`` writes its records, in ``out``.
JSON_LINES, COCO_RESULTS = "predictions.jsonl", "predictions.json"


@export("tasks.train")
def train(config: Any, task: str | Task | None = None) -> dict[str, float]:
    """Train as ``config`` (a task's ``train_config``: ``DetectConfig``, ...) says; returns the
    last evaluation's metrics. ``task`` is the config's task unless given.

    Writes ``config.out`` as every engine run does: ``config.yaml``, ``metrics.jsonl``,
    checkpoints, ``last.safetensors`` / ``best.safetensors`` (with the metadata
    :func:`sightkit.load` reads) and ``curves.png``.
    """
    task = _task(task, config, "train")
    # Join the process group first (Partial FC reads its rank when it is built), then seed the
    # initialisation: the Trainer seeds every RNG only after the model exists.
    init_distributed(config.device)
    torch.manual_seed(config.seed)
    parts = task.training_parts(config)
    if not config.resume:  # a resumed run's checkpoint holds its weights
        start_backbone(parts.model, config)
    if parts.evaluate is None and config.best_metric != "val_loss":
        config.best_metric, config.best_mode = "val_loss", "min"
    trainer = Trainer(
        parts.model,
        parts.criterion,
        parts.train_set,
        config,
        loss_weights=parts.loss_weights,
        val_data=parts.val_set,
        collate_fn=parts.collate,
        evaluate=parts.evaluate,
        weights_metadata={"task": task.name, **parts.metadata},
    )
    return trainer.fit()


def start_backbone(model: torch.nn.Module, config: Any) -> None:
    """``backbone_weights=`` of a training config: load ImageNet weights into ``model``'s ResNet
    backbone (``default``: the preset's paper weights, :func:`sightkit.weights.default_backbone_weights`;
    ``none``: from scratch; else a weight source). Every rank loads the same file, before DDP."""
    from sightkit.weights import default_backbone_weights, load_backbone_weights
    from sightkit.weights.backbone import NONE_VALUES

    setting = getattr(config, "backbone_weights", "none")
    source = default_backbone_weights(config.model) if setting == "default" else setting
    if source in NONE_VALUES:
        return
    report = load_backbone_weights(model, source)
    if is_main_process():
        Console(stderr=True).print(f"backbone: {report['loaded']} tensors from {source}", soft_wrap=True, markup=False)


def _task(task: str | Task | None, config: Any, mode: str) -> Task:
    if task is None:
        return task_of_config(config, mode)
    return get_task(task) if isinstance(task, str) else task


def load_for(task: Task, weights: str | Path, device: str | torch.device | None = None) -> Predictor:
    """:func:`sightkit.load` for weights of ``task`` (a clear error for any other file)."""
    if Path(weights).suffix == ".onnx":
        from sightkit.tasks.onnx_predictor import load_onnx

        return load_onnx(weights, device, task)
    weights = weights_file(weights)
    metadata = read_metadata(weights)
    if metadata_task(metadata) != task.name or "model" not in metadata:
        raise ValueError(
            f"weights={str(weights)!r} were not written by `sightkit train {task.name}` (their metadata: "
            f"task={metadata.get('task')!r}, model={metadata.get('model')!r})"
        )
    return task.load(weights, metadata, resolve_device(device))


def metrics_table(metrics: dict[str, float], title: str) -> Table:
    """A two-column rich table of ``metrics``."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    return table


@export("tasks.evaluate")
def evaluate(config: Any, console: Console | None = None, task: str | Task | None = None) -> dict[str, float]:
    """Evaluate ``config.weights`` (``config``: a task's ``eval_config``) as the task's eval plan
    says; writes ``metrics.json`` and the task's files to ``config.out`` (default: ``eval_<split>``
    next to the weights) and prints the tables."""
    task = _task(task, config, "eval")
    console = console or Console()
    predictor = load_for(task, config.weights, config.device)
    plan = task.eval_plan(config, predictor)
    loader = DataLoader(plan.dataset, batch_size=config.batch, num_workers=config.workers, collate_fn=plan.collate)
    precision = autocast_context(check_precision(config.precision), predictor.device)
    # The default folder, next to the weights, is known only now: checked before the evaluation.
    out = check_output(config.out or Path(config.weights).parent / plan.folder, "out")
    with Progress(console=console, transient=True) as progress, precision:  # the network predict runs
        metrics = plan.evaluate(predictor.inference_model(config.precision), loader, progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    console.print(metrics_table(metrics, plan.title))
    written = ["metrics.json", *plan.report(out, console)]
    console.print(Text.assemble(f"wrote {', '.join(written)} to ", (str(out), "bold")))
    return metrics


def coco_image_ids(annotations: str) -> dict[str, int]:
    """``{file name: image id}`` of a COCO JSON (``''``: none), so that predictions on a
    dataset's images carry its ids (images it does not list are left out of the COCO results);
    the name is also keyed without its folders."""
    if not annotations:
        return {}
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"annotations={annotations!r} does not exist; give a COCO JSON or ''")
    images = json.loads(path.read_text()).get("images", [])
    ids = {str(image["file_name"]): int(image["id"]) for image in images}
    return {**{Path(name).name: i for name, i in ids.items()}, **ids}


class VideoWriters:
    """One ``cv2.VideoWriter`` per video source: ``<stem>.mp4`` in ``out``, at the source's frame rate."""

    def __init__(self, out: Path) -> None:
        self.out, self.writers = out, {}

    def write(self, path: str, picture: Any) -> Path:
        import cv2

        target = self.out / f"{Path(path).stem}.mp4"
        if path not in self.writers:
            capture = cv2.VideoCapture(path)
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            capture.release()
            height, width = picture.shape[:2]
            self.writers[path] = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        self.writers[path].write(picture[..., ::-1].copy())  # OpenCV writes BGR
        return target

    def close(self) -> list[Path]:
        for writer in self.writers.values():
            writer.release()
        return [self.out / f"{Path(path).stem}.mp4" for path in self.writers]


@export("tasks.predict")
def predict(config: Any, console: Console | None = None, task: str | Task | None = None) -> list[dict[str, Any]]:
    """Predict on ``config.source`` with ``config.weights`` (``config``: a task's ``predict_config``)
    and write the records (module docstring).

    Unreadable files are reported and skipped (``on_error=skip``; a count at the end) or stop
    the run (``on_error=stop``). Returns each image's or frame's ``Results.to_dict()``.
    """
    task = _task(task, config, "predict")
    console = console or Console()
    if not config.source:
        raise ValueError("source= is required: an image, a folder, a glob, a video or an http(s) URL")
    predictor = load_for(task, config.weights, config.device)
    options = task.predict_options(config)
    image_ids = coco_image_ids(config.annotations)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    videos = VideoWriters(out)
    results, coco, count = [], [], 0
    with (out / JSON_LINES).open("w") as lines:
        stream = predictor(
            config.source, stream=True, batch=config.batch, conf=config.conf, on_error=config.on_error,
            precision=config.precision, max_pixels=config.max_pixels, **options,
        )  # fmt: skip
        for result in stream:
            count += 1
            lines.write(result.to_json() + "\n")
            if config.save:
                if result.frame is None:
                    result.save(out)
                else:
                    videos.write(result.path, result.plot())
            image_id = image_ids.get(result.path, image_ids.get(Path(result.path).name)) if image_ids else count
            if result.boxes is not None and result.frame is None and image_id is not None:
                coco += [{**record, "file_name": Path(result.path).name} for record in result.to_coco(image_id)]
            results.append(result.to_dict())
    written = [JSON_LINES]
    if coco or task.name in ("detect", "face_detect"):
        (out / COCO_RESULTS).write_text(json.dumps(coco))
        written.append(COCO_RESULTS)
    written += [path.name for path in videos.close()]
    if not count and predictor.skipped and Path(config.source).is_file():
        # One file that cannot be read is the command's failure, not a count of skipped files.
        raise ValueError(f"source={config.source!r} is not a readable image or video: {predictor.skipped[0][1]}")
    for path, reason in predictor.skipped:
        console.print(Text.assemble(("skipped", "yellow"), f" {path}: {reason}"), soft_wrap=True)
    skipped = f"; skipped {len(predictor.skipped)} unreadable" if predictor.skipped else ""
    done = f"{task.name}: {count} images or frames{skipped}; {', '.join(written)} in "
    # soft_wrap: no line break of Rich's inside the folder's name, which must stay copyable
    console.print(Text.assemble(done, (str(out), "bold")), soft_wrap=True)
    return results
