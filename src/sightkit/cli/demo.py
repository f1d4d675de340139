"""``sightkit demo`` (``make demo``): watch a DETR detector learn, then see what it found.

1. writes the synthetic shapes dataset to ``runs/data/shapes`` if it is not there;
2. trains a small detector on it for a few minutes on the CPU, with a progress bar;
3. evaluates the best weights with COCO AP (table, per-class AP, precision-recall plot);
4. draws the predictions on the validation images;
5. shows the box ops on a real photograph.

Everything lands in ``runs/demo/``; the last lines say where.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from sightkit.data.synthetic.shapes import ShapesConfig, synthesize_shapes
from sightkit.tasks.detect import DetectConfig, DetectEvalConfig, DetectPredictConfig, evaluate, predict, train


@dataclass
class DemoConfig:
    """Settings of ``sightkit demo``."""

    # DINO-style DETR by default: on the synthetic shapes it reaches AP 0.05 at 500 steps, where vanilla DETR is
    # still at 0 after 1,500 (benchmarks/detect_convergence.py); detr_r18_tiny is one key away.
    model: str = field(default="dino_r18_tiny", metadata={"help": "detector to train (sightkit.models.list_models())"})
    out: str = field(default="runs/demo", metadata={"help": "folder for everything the demo writes"})
    data: str = field(default="runs/data/shapes", metadata={"help": "synthetic shapes dataset (made if missing)"})
    images: int = field(default=600, metadata={"help": "images to synthesise when the dataset is missing"})
    steps: int = field(default=800, metadata={"help": "training steps"})
    batch: int = field(default=8, metadata={"help": "images per step"})
    lr: float = field(default=2e-4, metadata={"help": "learning rate"})
    seed: int = field(default=0, metadata={"help": "seed of data and training"})


def run_demo(config: DemoConfig) -> None:
    console = Console()
    out = Path(config.out)
    data = Path(config.data)
    if not (data / "annotations" / "train.json").is_file():
        console.rule("1. synthetic shapes dataset")
        synthesize_shapes(ShapesConfig(out=str(data), images=config.images, seed=config.seed, size=128))
    else:
        console.print(f"1. using the dataset in {data}")

    console.rule(f"2. training {config.model} for {config.steps} steps")
    train_config = DetectConfig(
        model=config.model,
        data=str(data),
        out=str(out / "train"),
        steps=config.steps,
        epochs=0,
        batch=config.batch,
        lr=config.lr,
        imgsz=128,
        max_size=160,
        warmup_steps=min(100, config.steps // 10),
        eval_every=max(config.steps // 5, 1),
        log_every=25,
        seed=config.seed,
        exist_ok=True,
    )
    train(train_config)
    weights = out / "train" / "best.safetensors"

    console.rule("3. COCO evaluation of the best weights")
    evaluate(DetectEvalConfig(weights=str(weights), data=str(data), out=str(out / "eval")), console)

    console.rule("4. predictions on validation images")
    samples = _validation_samples(data, out / "samples", count=12)
    predict(DetectPredictConfig(weights=str(weights), source=str(samples), out=str(out / "predictions")), console)

    console.rule("5. the box ops on a real photograph")
    from sightkit.cli.demo_ops import run_ops_demo

    run_ops_demo(str(out))

    console.rule("done")
    console.print(f"training curves  {out / 'train' / 'curves.png'}")
    console.print(
        f"metrics          {out / 'eval' / 'metrics.json'}  (precision-recall: {out / 'eval' / 'pr_curve.png'})"
    )
    console.print(f"predictions      {out / 'predictions'}/*.jpg")
    console.print(f"weights          {weights}")


def _validation_samples(data: Path, folder: Path, count: int) -> Path:
    """Copy the first ``count`` validation images into ``folder`` (images the model never trained on)."""
    records = json.loads((data / "annotations" / "val.json").read_text())["images"][:count]
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        shutil.copy(data / "images" / record["file_name"], folder / Path(record["file_name"]).name)
    return folder
