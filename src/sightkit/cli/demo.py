"""``sightkit demo`` (``make demo``): watch a detector learn, then see what it found.

1. writes an easy synthetic shapes dataset to ``runs/data/shapes_easy`` if it is not there
   (three classes, one to three large shapes per image, 96 px);
2. trains a small VarifocalNet on it for a few minutes on the CPU, with a progress bar;
3. evaluates the best weights with COCO AP (table, per-class AP, precision-recall plot);
4. draws the predictions on validation images;
5. shows the box ops on a real photograph.

Steps 1-4 run the ordinary command line (``sightkit data synth``, ``train``, ``eval``,
``predict``); the demo prints each command before it runs, so that it can be repeated, changed
and scaled up by hand, and writes them to ``OUT/commands.sh``. Everything lands in ``OUT``
(``runs/demo/``); the last lines say where.

The recipe is chosen to work in minutes on a 2-core CPU: a dense detector (VarifocalNet
assigns every object to several locations at once and needs no set matching, so it learns far
faster than the DETR family), without the star-shaped deformable refinement (a quarter of the
step time on a CPU), at 96 px, with AdamW at 1e-3 and a warm-up of a tenth of the run.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.text import Text


@dataclass
class DemoConfig:
    """Settings of ``sightkit demo``."""

    model: str = field(default="vfnet_r18_tiny", metadata={"help": "detector to train (sightkit.models.list_models())"})
    out: str = field(default="runs/demo", metadata={"help": "folder for everything the demo writes"})
    data: str = field(default="runs/data/shapes_easy", metadata={"help": "synthetic shapes dataset (made if missing)"})
    images: int = field(default=800, metadata={"help": "images to synthesise when the dataset is missing"})
    steps: int = field(default=600, metadata={"help": "training steps"})
    batch: int = field(default=8, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    imgsz: int = field(default=96, metadata={"help": "shorter image side in training and evaluation"})
    conf: float = field(default=0.3, metadata={"help": "score from which the pictures show a detection"})
    seed: int = field(default=0, metadata={"help": "seed of data and training"})


def data_command(config: DemoConfig) -> list[str]:
    """``sightkit data synth shapes ...``: the easy dataset (large shapes, three classes, 96 px)."""
    return [
        "data",
        "synth",
        "shapes",
        f"out={config.data}",
        f"images={config.images}",
        f"seed={config.seed}",
        f"size={config.imgsz}",
        "classes=3",
        "max_objects=3",
        "min_radius=0.15",
        "max_radius=0.3",
    ]


def train_command(config: DemoConfig) -> list[str]:
    """``sightkit train detect ...`` with the demo's recipe (module docstring)."""
    # The deformable refinement is three quarters of VarifocalNet's step time on a CPU.
    no_refinement = ["model_args={refine: false}"] if config.model.startswith("vfnet") else []
    return [
        "train",
        "detect",
        f"model={config.model}",
        *no_refinement,
        f"data={config.data}",
        f"out={Path(config.out) / 'train'}",
        f"imgsz={config.imgsz}",
        f"max_size={config.imgsz * 4 // 3}",
        f"steps={config.steps}",
        "epochs=0",
        f"batch={config.batch}",
        f"lr={config.lr:g}",
        f"warmup_steps={config.steps // 10}",
        "backbone_lr_mult=1",
        "clip_grad_norm=0",
        f"eval_every={max(config.steps // 4, 1)}",
        "best_mode=max",  # best.safetensors: the highest AP
        "log_every=25",
        f"seed={config.seed}",
        "exist_ok=true",
    ]


def eval_command(config: DemoConfig) -> list[str]:
    out = Path(config.out)
    return [
        "eval",
        "detect",
        f"weights={out / 'train' / 'best.safetensors'}",
        f"data={config.data}",
        f"out={out / 'eval'}",
    ]


def predict_command(config: DemoConfig, source: Path) -> list[str]:
    out = Path(config.out)
    return [
        "predict",
        "detect",
        f"weights={out / 'train' / 'best.safetensors'}",
        f"source={source}",
        f"out={out / 'predictions'}",
        f"conf={config.conf:g}",
    ]


def shell_line(arguments: list[str]) -> str:
    """``arguments`` as one line a POSIX shell runs as the same ``sightkit`` call."""
    return shlex.join(["sightkit", *arguments])


def run_cli(arguments: list[str], console: Console) -> None:
    """Run ``sightkit ARGUMENTS`` in this process (one torch import for the whole demo), printing
    the command first; a failing command ends the demo with its exit code."""
    from sightkit.cli.app import app

    console.print(f"[dim]$ {escape(shell_line(arguments))}[/dim]", soft_wrap=True)
    code = app(arguments, standalone_mode=False, prog_name="sightkit")
    if code:
        raise SystemExit(code)


def run_demo(config: DemoConfig) -> None:
    console = Console()
    out = Path(config.out)
    data = Path(config.data)
    samples = out / "samples"
    commands = [data_command(config), train_command(config), eval_command(config), predict_command(config, samples)]

    if not (data / "annotations" / "train.json").is_file():
        console.rule("1. synthetic shapes dataset")
        run_cli(commands[0], console)
    else:
        console.print(f"1. using the dataset in {data}")

    console.rule(f"2. training {config.model} for {config.steps} steps")
    run_cli(commands[1], console)

    console.rule("3. COCO evaluation of the best weights")
    run_cli(commands[2], console)

    console.rule("4. predictions on validation images")
    _validation_samples(data, samples, count=12)
    run_cli(commands[3], console)

    console.rule("5. the box ops on a real photograph")
    from sightkit.cli.demo_ops import run_ops_demo

    run_ops_demo(str(out))

    script = out / "commands.sh"
    script.write_text(
        "\n".join(
            [
                "#!/bin/sh",
                "# the commands of sightkit demo (the first is skipped when the data exists)",
                *map(shell_line, commands),
            ]
        )
        + "\n"
    )
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    console.rule("done")
    summary = [
        f"AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f} on {data / 'annotations' / 'val.json'}",
        f"training curves  {out / 'train' / 'curves.png'}",
        f"metrics          {out / 'eval' / 'metrics.json'}  (precision-recall: {out / 'eval' / 'pr_curve.png'})",
        f"predictions      {out / 'predictions'}/*.jpg",
        f"weights          {out / 'train' / 'best.safetensors'}",
        f"the commands     {script}",
    ]
    for line in summary:  # plain text, and no line break of Rich's inside a path: they must stay copyable
        console.print(Text(line), soft_wrap=True)


def _validation_samples(data: Path, folder: Path, count: int, enlarge: int = 3) -> Path:
    """Copy the first ``count`` validation images (images the model never trained on) into
    ``folder``, ``enlarge`` times larger: the pictures of 96 px images would be too small to
    read their labels, and the model resizes its input to ``imgsz`` anyway."""
    from PIL import Image

    records = json.loads((data / "annotations" / "val.json").read_text())["images"][:count]
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        with Image.open(data / "images" / record["file_name"]) as image:
            large = image.resize((image.width * enlarge, image.height * enlarge), Image.Resampling.BICUBIC)
            large.save(folder / (Path(record["file_name"]).stem + ".png"))
    return folder
