"""The training loop: one process or many (``torchrun``), resumable to the bit.

A task hands the :class:`Trainer` a model, a criterion that returns a dict of named losses,
the loss weights (applied here and nowhere else), datasets and a :class:`TrainConfig`::

    trainer = Trainer(model, criterion, train_set, config, loss_weights={"loss_ce": 1, "loss_bbox": 5},
                      val_data=val_set, collate_fn=collate, evaluate=evaluate_coco)
    metrics = trainer.fit()

Each optimiser step sees ``config.batch`` samples in all: ``world_size`` processes each
run ``accumulate`` micro-batches of ``batch / (world_size * accumulate)`` samples. The run
folder ``config.out`` receives ``config.yaml`` (the resolved settings), ``metrics.jsonl``,
``last.pt`` / ``best.pt`` / ``step_*.pt`` checkpoints, ``last.safetensors`` /
``best.safetensors`` weights and ``curves.png``; only rank 0 writes.

Safety: the run folder is locked while a run writes into it (``engine.run_folder``; a second
run is refused with the first one's pid) and temporary files of crashed writers are removed
at the start. Before the first step every image file of the training and validation data is
checked (``check_data``, :mod:`sightkit.data.preflight`): with ``on_error=stop`` a missing,
unreadable, truncated or oversized one (``max_pixels``) stops the run with one line listing
them; with ``on_error=skip`` they are left out, and an image that fails later is replaced by
the next readable sample, logged and counted (``bad_samples`` in ``metrics.jsonl``: training
samples left out by the check plus those replaced so far, over all ranks). Under
``torchrun`` a rank that stalls or dies ends every process after ``ddp_timeout`` seconds
with one :class:`~sightkit.engine.DistributedError` line.

Exact resume: a run stopped after step N and resumed (``resume=true``) reaches the same
parameters, optimiser state and averaged weights as a run that never stopped, bit for bit
on the same machine, including mid-epoch stops: the checkpoint holds the position in the
epoch and every RNG state (Python, NumPy, torch CPU and CUDA, per rank), and every rank's
shard of parameters that differ between ranks (Partial FC's class centres; see
``engine.rank_local``), which also lets a run resume on another number of processes. Random
augmentation inside DataLoader workers (``workers > 0``) is seeded per epoch, so it is
reproducible from run to run but not across a mid-epoch resume; use ``workers=0`` when
that matters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import random
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from sightkit._api import export
from sightkit.config import save_config
from sightkit.data.coco import DEFAULT_MAX_PIXELS, ImageReadError
from sightkit.data.preflight import check_images, describe_problems, indices_without, sample_image_paths
from sightkit.engine.averaging import SWA, ModelEMA, RunningMean
from sightkit.engine.checkpoint import (
    LAST,
    CheckpointManager,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_weights,
    set_rng_state,
)
from sightkit.engine.data import ResumableSampler, ShardSampler, call_model, to_device
from sightkit.engine.distributed import (
    all_gather_object,
    collective_errors,
    init_distributed,
    per_rank_batch,
    reduce_sum,
    unwrap_model,
)
from sightkit.engine.metrics import CSV_NAME, EVENTS_PREFIX, MetricsLog, ProgressBar, is_placeholder, plot_curves
from sightkit.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from sightkit.engine.rank_local import rank_local_state, restore_rank_local
from sightkit.engine.run_folder import LOCK, RunLock, remove_stale_temporaries

logger = logging.getLogger(__name__)

AMP_MODES = ("none", "bf16", "fp16")
ON_ERROR = ("stop", "skip")
EVAL_WEIGHTS = ("auto", "model", "ema", "swa")
CHECKPOINT_FORMAT = 1

Criterion = Callable[[Any, Any], Mapping[str, Tensor]]
Evaluate = Callable[[nn.Module, DataLoader], Mapping[str, float]]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@export("engine.TrainConfig")
@dataclass
class TrainConfig:
    """Every setting of the training engine. Task configs subclass it and add their own keys.

    Build one from ``key=value`` tokens and a YAML file with :func:`sightkit.config.build_config`.

    Resuming compares the checkpoint's settings with these and refuses any difference (unless
    ``resume_override=true``, which lists them as a warning), except for the keys of
    :attr:`RESUME_MAY_CHANGE`, each allowed with a note for the reason given there. Task
    configs extend that mapping with their own keys.
    """

    #: Keys a resumed run may change, and why that is legitimate. Everything else (batch, lr,
    #: seed, the model, the schedule's shape, ...) would silently make a different run.
    RESUME_MAY_CHANGE: ClassVar[dict[str, str]] = {
        "epochs": "training longer or shorter is what resuming is for; the schedule is stretched to the new length",
        "steps": "training longer or shorter is what resuming is for; the schedule is stretched to the new length",
        "out": "a run folder may be moved or copied",
        "workers": "loader processes change the speed, not the samples",
        "device": "another device computes the same run (not bit for bit across device types)",
        "ddp_timeout": "how long processes wait for each other does not change the computation",
        "progress": "display only",
        "plot": "output only",
        "tensorboard": "output only",
        "csv": "output only",
        "log_every": "when to log does not change the weights",
        "eval_every": "when to evaluate does not change the weights",
        "save_every": "when to save does not change the weights",
        "keep": "how many snapshots to keep does not change the weights",
        "check_data": "checking the files does not change them",
        "on_error": "data fixed or skipped between the runs is a decision about the data, not the run",
        "max_pixels": "a limit on image size only decides which files may be read",
        "exist_ok": "applies to fresh runs only",
    }

    out: str = field(default="runs/train", metadata=_help("run folder (checkpoints, metrics, plots)"))
    epochs: int = field(default=10, metadata=_help("passes over the training data (0: steps decides)"))
    steps: int = field(default=0, metadata=_help("cap on optimiser steps (0: no cap)"))
    batch: int = field(default=16, metadata=_help("global batch of one optimiser step, all processes together"))
    accumulate: int = field(default=1, metadata=_help("micro-batches accumulated per optimiser step"))
    lr: float = field(default=1e-4, metadata=_help("base learning rate"))
    weight_decay: float = field(default=1e-4, metadata=_help("weight decay (none on norms, biases, embeddings)"))
    optimizer: str = field(default="adamw", metadata=_help(f"one of {', '.join(OPTIMIZERS)}"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum"))
    nesterov: bool = field(default=False, metadata=_help("SGD with Nesterov momentum"))
    betas: tuple[float, ...] = field(default=(0.9, 0.999), metadata=_help("AdamW betas"))
    backbone_prefix: str = field(default="backbone.", metadata=_help("parameter-name prefix of the backbone"))
    backbone_lr_mult: float = field(default=1.0, metadata=_help("backbone learning-rate multiplier (DETR: 0.1)"))
    schedule: str = field(default="cosine", metadata=_help(f"one of {', '.join(SCHEDULES)}, by step"))
    warmup_steps: int = field(default=0, metadata=_help("linear warm-up steps"))
    min_lr_ratio: float = field(default=0.0, metadata=_help("final lr / base lr for cosine and poly"))
    milestones: tuple[int, ...] = field(default=(), metadata=_help("steps where the step schedule multiplies by gamma"))
    gamma: float = field(default=0.1, metadata=_help("factor of the step schedule"))
    power: float = field(default=1.0, metadata=_help("exponent of the poly schedule"))
    clip_grad_norm: float = field(default=0.0, metadata=_help("clip gradients to this total norm (0: off)"))
    amp: str = field(default="none", metadata=_help("mixed precision: none, bf16 (CPU or CUDA), fp16 (CUDA)"))
    compile: bool = field(default=False, metadata=_help("torch.compile the model"))
    ema: bool = field(default=False, metadata=_help("keep an exponential moving average of the weights"))
    ema_decay: float = field(default=0.9999, metadata=_help("EMA decay after warm-up"))
    ema_tau: float = field(default=2000.0, metadata=_help("EMA decay warm-up length in steps"))
    swa_start: int = field(default=0, metadata=_help("step from which SWA averages the weights (0: off)"))
    swa_every: int = field(default=100, metadata=_help("steps between SWA snapshots"))
    eval_every: int = field(default=0, metadata=_help("steps between evaluations (0: each epoch)"))
    eval_weights: str = field(default="auto", metadata=_help("weights to evaluate: auto, model, ema, swa"))
    best_metric: str = field(default="val_loss", metadata=_help("metric that picks best.pt"))
    best_mode: str = field(default="min", metadata=_help("max or min: which way best_metric improves"))
    save_every: int = field(default=0, metadata=_help("steps between checkpoints (0: each epoch)"))
    keep: int = field(default=0, metadata=_help("step_*.pt snapshots to keep besides last and best"))
    max_bad_steps: int = field(default=20, metadata=_help("stop after this many non-finite steps in a row"))
    log_every: int = field(default=50, metadata=_help("steps between metrics.jsonl records"))
    seed: int = field(default=0, metadata=_help("seed of every RNG (plus the rank)"))
    device: str = field(default="", metadata=_help("cpu, cuda, cuda:K ('' : cuda if available)"))
    workers: int = field(default=0, metadata=_help("DataLoader worker processes per rank"))
    sync_bn: bool = field(default=False, metadata=_help("SyncBatchNorm across processes (CUDA)"))
    resume: bool | str = field(default=False, metadata=_help("true: continue OUT/last.pt; or a checkpoint path"))
    resume_override: bool = field(
        default=False, metadata=_help("resume although settings differ from the checkpoint's (they are listed)")
    )
    exist_ok: bool = field(default=False, metadata=_help("allow a fresh run in a non-empty out folder"))
    on_error: str = field(
        default="stop",
        metadata=_help("bad image files: stop (before the first step, listing them) or skip (log, count, leave out)"),
    )
    check_data: bool = field(
        default=True, metadata=_help("check every image file (of datasets with image_path(i)) before the first step")
    )
    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS, metadata=_help("largest width*height the data check accepts (0: no limit)")
    )
    ddp_timeout: float = field(
        default=600.0, metadata=_help("seconds a process waits for the others (torchrun) before all stop")
    )
    progress: bool = field(default=True, metadata=_help("progress bar and log lines on rank 0"))
    plot: bool = field(default=True, metadata=_help("write curves.png at the end"))
    tensorboard: bool = field(default=True, metadata=_help("write TensorBoard event files into the out folder"))
    csv: bool = field(default=True, metadata=_help("write results.csv beside metrics.jsonl"))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_config(config: TrainConfig) -> None:
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (or a subclass), got {type(config).__name__}")
    _check_choice("amp", config.amp, AMP_MODES)
    _check_choice("eval_weights", config.eval_weights, EVAL_WEIGHTS)
    _check_choice("best_mode", config.best_mode, ("max", "min"))
    _check_choice("optimizer", config.optimizer, OPTIMIZERS)
    _check_choice("schedule", config.schedule, SCHEDULES)
    _check_choice("on_error", config.on_error, ON_ERROR)
    if not config.ddp_timeout > 0:
        raise ValueError(f"ddp_timeout must be > 0 seconds, got {config.ddp_timeout}")
    if config.max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0: no limit), got {config.max_pixels}")
    for name in ("epochs", "steps", "warmup_steps", "eval_every", "save_every", "keep", "workers", "swa_start"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    for name in ("accumulate", "max_bad_steps", "log_every", "swa_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.epochs == 0 and config.steps == 0:
        raise ValueError("epochs=0 and steps=0 leave nothing to train; set epochs= or steps=")
    if config.clip_grad_norm < 0:
        raise ValueError(f"clip_grad_norm must be >= 0 (0: off), got {config.clip_grad_norm}")
    if config.eval_weights == "ema" and not config.ema:
        raise ValueError("eval_weights=ema needs ema=true")
    if config.eval_weights == "swa" and config.swa_start == 0:
        raise ValueError("eval_weights=swa needs swa_start= > 0 (the step where averaging starts)")
    if len(config.betas) != 2:
        raise ValueError(f"betas must be two numbers, got {list(config.betas)}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _note(text: str) -> None:
    """A line for the person running the training (rank 0 calls it), on stderr beside warnings."""
    print(f"note: {text}", file=sys.stderr, flush=True)


def _same_setting(a: Any, b: Any) -> bool:
    # A checkpoint stores tuples and lists as they were; YAML and the command line may give either.
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class _SubsetWithAttributes(Subset):
    """A ``Subset`` through which the wrapped dataset's attributes stay readable (task
    evaluators read e.g. ``loader.dataset.uses_detections``)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("dataset", "indices"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _ReplaceUnreadable(Dataset):
    """``dataset[i]``, or when its image cannot be read (:class:`~sightkit.data.ImageReadError`),
    the next sample that can be: logged, and counted in ``count`` (shared with loader worker
    processes). A replacement keeps every batch full, so that all ranks step together."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.count = multiprocessing.Value("q", 0)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        size = len(self.dataset)
        for offset in range(size):
            candidate = (index + offset) % size
            try:
                return self.dataset[candidate]
            except ImageReadError as error:
                with self.count.get_lock():
                    self.count.value += 1
                logger.warning("on_error=skip: training sample %d replaced by the next one: %s", candidate, error)
        raise ImageReadError("(every training image)", f"none of the {size} training samples can be read")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("dataset", "count"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _stats_line(values: Mapping[str, float]) -> str:
    # COCO's -1 (no object of that size) is shown as "-", not as a score.
    return "  ".join(f"{k} {'-' if is_placeholder(k, v) else format(v, '.4g')}" for k, v in values.items())


@export("engine.Trainer")
class Trainer:
    """Optimise ``model`` on ``train_data`` with the settings in ``config``.

    Args:
        model: the network; ``model(inputs)`` gives the outputs the criterion reads, or
            ``model(**inputs)`` when the collated inputs are a dict of keyword arguments
            (e.g. DETR's ``{"images": ..., "mask": ...}``).
        criterion: ``criterion(outputs, targets) -> {name: scalar tensor}``.
        train_data: a map-style dataset of ``(image, target)`` samples.
        config: a :class:`TrainConfig` (or a task config that subclasses it).
        loss_weights: ``{name: weight}``; the optimised loss is ``sum(weight * loss[name])``.
            Losses without a weight are logged but not optimised (as in DETR). ``None``
            weights every loss by 1.
        val_data: the validation dataset; each rank reads its own shard of it.
        collate_fn: turns a list of samples into ``(images, targets)``; targets may be a
            list of dicts of tensors, moved to the device as they are.
        evaluate: ``evaluate(model, loader) -> {metric: value}``, called on every rank
            with the evaluation weights (eval mode, no grad, autocast as in training) and
            this rank's shard; gather predictions with
            :func:`sightkit.engine.all_gather_object` before computing metrics. Without
            it, evaluation is the mean weighted validation loss (``val_loss``) and the
            mean of each named loss (``val_<name>``).
        optimizer, scheduler: replace the ones built from ``config`` (AdamW/SGD with
            no-decay groups; warm-up + cosine/step/poly by step).
        weights_metadata: str -> str entries written into the header of ``last.safetensors``
            and ``best.safetensors`` (what a task needs to rebuild the model: its name, classes).

    Raises:
        ValueError: a setting is out of range, the global batch does not split over the
            processes, the out folder already holds a run (without ``resume``/``exist_ok``),
            or the resume checkpoint does not fit the model.
        FileNotFoundError: ``resume`` names a checkpoint that does not exist.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Criterion,
        train_data: Dataset,
        config: TrainConfig,
        *,
        loss_weights: Mapping[str, float] | None = None,
        val_data: Dataset | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        evaluate: Evaluate | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        weights_metadata: Mapping[str, str] | None = None,
    ) -> None:
        _check_config(config)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(criterion):
            raise TypeError(f"criterion must be callable (outputs, targets) -> dict, got {type(criterion).__name__}")
        self.config = config
        self.criterion = criterion
        if loss_weights is not None and not loss_weights:
            raise ValueError("loss_weights is empty; name at least one loss, or pass None to weight every loss by 1")
        self.loss_weights = None if loss_weights is None else {k: float(v) for k, v in loss_weights.items()}
        self.evaluate_fn = evaluate
        self.weights_metadata = dict(weights_metadata or {})
        self.context = init_distributed(config.device, config.ddp_timeout)
        self.device = self.context.device
        world, rank = self.context.world_size, self.context.rank
        self.micro_batch = per_rank_batch(config.batch, world, config.accumulate)
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError(f"amp=fp16 needs a CUDA device (got device {self.device}); use amp=bf16 on CPU")
        if config.sync_bn and world > 1 and self.device.type != "cuda":
            raise ValueError("sync_bn=true needs CUDA devices (SyncBatchNorm has no CPU kernel); set sync_bn=false")
        self.out = Path(config.out)
        self.preflight_skipped = 0
        with collective_errors(config.ddp_timeout):
            resume_path = self._resume_path()
            train_data, val_data = self._check_data(train_data, val_data)
        self._replacer = _ReplaceUnreadable(train_data) if config.on_error == "skip" else None
        if self._replacer is not None:
            train_data = self._replacer

        _seed_everything(config.seed + rank)
        self.sampler = ResumableSampler(train_data, num_replicas=world, rank=rank, seed=config.seed)
        self.steps_per_epoch = self.sampler.num_samples // (self.micro_batch * config.accumulate)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train_data has {len(train_data)} samples, fewer than one optimiser step needs "
                f"(batch={config.batch}); lower batch= or add data"
            )
        by_epochs = config.epochs * self.steps_per_epoch
        if config.epochs and config.steps:
            self.total_steps = min(by_epochs, config.steps)
        else:
            self.total_steps = by_epochs or config.steps
        self.warmup_steps = self._warmup_steps()
        # The loader's generator only seeds worker processes; it is re-seeded every epoch,
        # so its state is a function of (seed, epoch, rank) and needs no checkpointing.
        self._loader_generator = torch.Generator()
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(
            train_data,
            batch_size=self.micro_batch,
            sampler=self.sampler,
            num_workers=config.workers,
            collate_fn=collate_fn,
            pin_memory=pin,
            drop_last=True,
            generator=self._loader_generator,
        )
        self.val_loader = None
        if val_data is not None:
            self.val_loader = DataLoader(
                val_data,
                batch_size=max(config.batch // world, 1),
                sampler=ShardSampler(len(val_data), world, rank),
                num_workers=config.workers,
                collate_fn=collate_fn,
                pin_memory=pin,
                # Its own generator, so that evaluating does not move the global RNG that training uses.
                generator=torch.Generator().manual_seed(config.seed),
            )

        model = model.to(self.device)
        if config.sync_bn and world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.optimizer = optimizer or build_optimizer(
            model,
            name=config.optimizer,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=tuple(config.betas),
            momentum=config.momentum,
            nesterov=config.nesterov,
            backbone_prefix=config.backbone_prefix,
            backbone_lr_mult=config.backbone_lr_mult,
        )
        self.scheduler = scheduler or build_scheduler(
            self.optimizer,
            name=config.schedule,
            total_steps=max(self.total_steps, 1),
            warmup_steps=self.warmup_steps,
            min_lr_ratio=config.min_lr_ratio,
            milestones=config.milestones,
            gamma=config.gamma,
            power=config.power,
        )
        self.scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
        self.ema = ModelEMA(model, config.ema_decay, config.ema_tau) if config.ema else None
        self.swa = SWA(model) if config.swa_start > 0 else None
        if world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            with collective_errors(config.ddp_timeout):  # DDP broadcasts rank 0's parameters
                model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.model = model
        self._parameters = [p for p in model.parameters() if p.requires_grad]
        self.forward_model = torch.compile(model) if config.compile else model

        self.checkpoints = CheckpointManager(self.out, keep=config.keep, mode=config.best_mode)
        self.log = MetricsLog(
            self.out / "metrics.jsonl", enabled=self.context.is_main, csv=config.csv, tensorboard=config.tensorboard
        )
        self.step = 0
        self.bad_in_row = 0
        self.bad_total = 0
        self.metrics: dict[str, float] = {}
        self._loss_names: list[str] | None = None
        self._start_epoch, self._start_in_epoch = 0, 0
        self._own_scheduler = scheduler is None
        # Last, so that a setting refused above leaves no folder behind; before loading, which
        # rewrites metrics.jsonl.
        with collective_errors(config.ddp_timeout):
            self._lock = self._lock_run_folder()
        if resume_path is not None:
            self._load(resume_path)

    # ------------------------------------------------------------------ set-up helpers

    def _lock_run_folder(self) -> RunLock | None:
        """Rank 0 locks the run folder and removes stale temporary files; every rank raises
        if that failed, so that none waits for the others in a collective."""
        lock, error = None, None
        if self.context.is_main:
            try:
                lock = RunLock(self.out).acquire()
            except (OSError, ValueError) as caught:
                error = caught
            else:
                removed = remove_stale_temporaries(self.out)
                if removed:
                    _note(
                        f"removed {len(removed)} temporary files that interrupted writes left in {self.out}: "
                        + ", ".join(removed)
                    )
                if lock.taken_over is not None:
                    _note(f"took over the lock of {self.out}, left by process {lock.taken_over}, which has ended")
        failures = all_gather_object(None if error is None else str(error))
        if error is not None:
            raise error
        if failures[0] is not None:
            raise ValueError(f"rank 0: {failures[0]}")
        return lock

    def _check_data(self, train_data: Dataset, val_data: Dataset | None) -> tuple[Dataset, Dataset | None]:
        """The pre-flight check of every image file (``check_data``), each rank a share of the
        files: with ``on_error=stop`` a one-line error listing the bad ones, with ``skip`` the
        datasets without their samples."""
        config = self.config
        if not config.check_data:
            return train_data, val_data
        parts = {"training": train_data, "validation": val_data}
        paths = {name: sample_image_paths(data) for name, data in parts.items() if data is not None}
        unknown = [name for name, found in paths.items() if found is None]
        if unknown:
            logger.info("check_data: the %s data have no image_path(index); not checked", " and ".join(unknown))
        files = sorted({str(path) for found in paths.values() if found is not None for path in found})
        world, rank = self.context.world_size, self.context.rank
        problems: dict[str, str] = {}
        for found in all_gather_object(check_images(files[rank::world], config.max_pixels)):
            problems.update(found)
        if not problems:
            return train_data, val_data
        problems = dict(sorted(problems.items()))
        summary = describe_problems(problems, len(files), shown=50)
        if config.on_error == "stop":
            raise ValueError(
                f"check_data: {summary}. Fix or remove them, set on_error=skip to train without them, raise "
                "max_pixels= for large images, or check_data=false to skip this check"
            )
        kept = {}
        for name, data in parts.items():
            found = paths.get(name)
            if data is None or found is None:
                kept[name] = data
                continue
            indices = indices_without(found, problems)
            if not indices:
                raise ValueError(f"check_data: none of the {len(found)} {name} samples has a usable image: {summary}")
            kept[name] = data if len(indices) == len(found) else _SubsetWithAttributes(data, indices)
            if name == "training":
                self.preflight_skipped = len(found) - len(indices)
            if self.context.is_main and len(indices) < len(found):
                _note(f"on_error=skip: {len(found) - len(indices)} of {len(found)} {name} samples left out")
        if self.context.is_main:
            _note(f"on_error=skip: {summary}")
        return kept["training"], kept["validation"]

    def _warmup_steps(self) -> int:
        """``warmup_steps``, capped at a tenth of the run (a warm-up longer than that is a
        setting made for a longer run: the learning rate would rise for most of this one)."""
        warmup, cap = self.config.warmup_steps, self.total_steps // 10
        if warmup <= cap:
            return warmup
        if self.context.is_main:
            warnings.warn(
                f"warmup_steps={warmup} is more than a tenth of this run's {self.total_steps} optimiser steps; "
                f"warming up over {cap} steps instead (set warmup_steps= <= {cap} to silence this)",
                UserWarning,
                stacklevel=3,
            )
        return cap

    def _resume_path(self) -> Path | None:
        """The checkpoint to resume from, after checking that the run folder may be written."""
        resume = self.config.resume
        if resume is False or resume == "":
            held = sorted(p.name for p in self.out.iterdir() if p.name != LOCK) if self.out.is_dir() else []
            if held and not self.config.exist_ok:
                shown = ", ".join(held[:6]) + (", ..." if len(held) > 6 else "")
                raise ValueError(
                    f"out={str(self.out)!r} already holds files ({shown}); continue that run with resume=true, "
                    "choose a new out=, or set exist_ok=true to start afresh in it (its files of the same names "
                    "will be replaced)"
                )
            return None
        path = self.out / LAST if resume is True else Path(resume)
        if path.is_dir():
            path = path / LAST
        if not path.is_file():
            raise FileNotFoundError(
                f"resume={resume!r}: no checkpoint at {path}; give the path of a last.pt/best.pt/step_*.pt file "
                "or of a run folder that holds last.pt, or drop resume= to start a fresh run"
            )
        return path

    @property
    def unwrapped(self) -> nn.Module:
        """The model without DDP/compile wrappers (what checkpoints and exports hold)."""
        return unwrap_model(self.model)

    def _eval_model(self) -> nn.Module:
        choice = self.config.eval_weights
        if choice == "auto":
            choice = "ema" if self.ema is not None else "model"
        if choice == "ema" and self.ema is not None:
            return self.ema.module
        if choice == "swa" and self.swa is not None and self.swa.updates > 0:
            return self.swa.module
        return self.unwrapped

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs. Collective under DDP (gathers every rank's RNG state)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "step_in_epoch": self.step % self.steps_per_epoch,
            "model": self.unwrapped.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "checkpoints": self.checkpoints.state_dict(),
            "bad_steps": {"in_row": self.bad_in_row, "total": self.bad_total},
            "rng": all_gather_object(rng_state()),
            "rank_local": self._gather_rank_local(),
            "world_size": self.context.world_size,
            "config": dataclasses.asdict(self.config),
        }

    def _gather_rank_local(self) -> list[dict[str, Any]] | None:
        """Every rank's shard of the state that differs between ranks (engine.rank_local);
        None on one process, whose ``model`` entry already holds all of it."""
        if not self.context.distributed:
            return None
        averaged = {"ema": self.ema.module if self.ema else None, "swa": self.swa.module if self.swa else None}
        parts = all_gather_object(rank_local_state(self.unwrapped, self.optimizer, averaged))
        return None if parts[0] is None else parts

    def _load(self, path: Path) -> None:
        # On the CPU: RNG states must stay CPU tensors; everything else is copied to its device on loading.
        state = load_checkpoint(path, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
            raise ValueError(f"{path} is not a sightkit training checkpoint (no format {CHECKPOINT_FORMAT} header)")
        self._compare_config(path, state.get("config") or {})
        restore_rank_local(
            state, self.unwrapped, self.optimizer, self.context.rank, self.context.world_size, source=str(path)
        )
        load_model_state(self.unwrapped, state["model"], what=f"checkpoint {path}")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:
            raise ValueError(
                f"the optimiser state in {path} does not fit ({error}); resume with the optimizer= and "
                "backbone_lr_mult= settings of the run that wrote it"
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        if self._own_scheduler:
            # LambdaLR restores its factor objects' attributes too: the run's length (and the
            # capped warm-up) must be this run's, or a longer resumed run would sit at the end of the old schedule.
            for factor in self.scheduler.lr_lambdas:
                factor.total_steps, factor.warmup_steps = max(self.total_steps, 1), self.warmup_steps
        for name, holder in (("scaler", self.scaler), ("ema", self.ema), ("swa", self.swa)):
            saved = state.get(name)
            if holder is not None and saved is not None:
                holder.load_state_dict(saved)
            elif (holder is None) != (saved is None):
                raise ValueError(
                    f"{path} was written {'with' if saved is not None else 'without'} {name}, but this run is "
                    f"configured {'without' if saved is not None else 'with'} it; use the {name} settings "
                    "(amp=, ema=, swa_start=) of the run that wrote it"
                )
        self.checkpoints.load_state_dict(state["checkpoints"])
        self.bad_in_row, self.bad_total = state["bad_steps"]["in_row"], state["bad_steps"]["total"]
        self.step = int(state["step"])
        self._start_epoch, self._start_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        if self._start_in_epoch >= self.steps_per_epoch:
            self._start_epoch, self._start_in_epoch = self._start_epoch + 1, 0
        rng = state["rng"]
        if len(rng) == self.context.world_size:
            set_rng_state(rng[self.context.rank])
        else:
            # Another number of processes: each rank still needs its own stream, just not the old one.
            _seed_everything(self.config.seed + self.context.rank + 1_000_003 * self.step)
        self.log.truncate_after(self.step)

    def _compare_config(self, path: Path, saved: Mapping[str, Any]) -> None:
        """Refuse a resume whose settings differ from the checkpoint's, except those of
        ``RESUME_MAY_CHANGE`` (a note each) or with ``resume_override=true`` (a warning)."""
        current = dataclasses.asdict(self.config)
        free = type(self.config).RESUME_MAY_CHANGE
        notes, changes = [], []
        for key in sorted(set(saved) | set(current)):
            if key in ("resume", "resume_override"):
                continue
            if key not in saved or key not in current:  # a key added or removed by another sightkit version
                value = f"uses {current[key]!r}" if key in current else f"drops {saved[key]!r}"
                notes.append(f"{key}: not a setting of the version that wrote the checkpoint; this run {value}")
                continue
            before, after = saved[key], current[key]
            if _same_setting(before, after):
                continue
            line = f"{key}: {before!r} -> {after!r}"
            (notes if key in free else changes).append(f"{line} ({free[key]})" if key in free else line)
        if changes and not self.config.resume_override:
            raise ValueError(
                f"resume: this run's settings differ from those {path} was written with: {'; '.join(changes)}. "
                "Resume with the same settings, start a fresh run, or set resume_override=true to continue anyway"
            )
        if not self.context.is_main:
            return
        for line in notes:
            _note(f"resume: {line}")
        if changes:
            warnings.warn(
                f"resume_override=true: resuming {path} with changed settings: {'; '.join(changes)}; the run is no "
                "longer the one the checkpoint started",
                UserWarning,
                stacklevel=4,
            )

    def _save(self, metric: float | None = None) -> None:
        # The best value goes into the state first, so that best.pt records itself as the best.
        is_best = metric is not None and self.checkpoints.update_best(metric)
        state = self.state_dict()
        if self.context.is_main:
            self.checkpoints.save(state, self.step, is_best=is_best)
            if is_best:
                save_weights(self._eval_model(), self.out / "best.safetensors", self.weights_metadata)

    # ------------------------------------------------------------------ the loop

    def _epoch_batches(self, epoch: int, start_step: int) -> Iterator[Any]:
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_step * self.micro_batch * self.config.accumulate)
        self._loader_generator.manual_seed(self.config.seed + 7919 * epoch + self.context.rank)
        return iter(self.train_loader)

    def _to_device(self, batch: Any) -> Any:
        # On the CPU the loader's tensors are already in place; walking a list of target
        # dicts per batch would only cost time.
        if self.device.type == "cpu":
            return batch
        return to_device(batch, self.device, non_blocking=True)

    def _losses(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        images, targets = self._to_device(batch)
        with _autocast(self.device, self.config.amp):
            outputs = call_model(self.forward_model, images)
            losses = self.criterion(outputs, targets)
        if not isinstance(losses, Mapping) or not losses:
            raise TypeError(f"criterion must return a non-empty dict of named losses, got {type(losses).__name__}")
        if self._loss_names is None:
            self._check_losses(losses)
        weights = self.loss_weights or dict.fromkeys(losses, 1.0)
        # The weights are applied here and only here; float32 so that bf16/fp16 losses add up exactly.
        total = sum(weights[name] * losses[name].float() for name in weights)
        return total, losses

    def _check_losses(self, losses: Mapping[str, Tensor]) -> None:
        for name, value in losses.items():
            if not isinstance(value, Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"criterion's loss {name!r} must be a scalar tensor, got {shape}")
        if self.loss_weights is not None:
            unknown = sorted(set(self.loss_weights) - set(losses))
            if unknown:
                raise ValueError(
                    f"loss_weights names {unknown}, which the criterion does not return "
                    f"(it returns {sorted(losses)}); fix the names in loss_weights"
                )
        self._loss_names = sorted(losses)

    def train_step(self, micro_batches: Sequence[Any]) -> tuple[bool, dict[str, float]]:
        """One optimiser step over ``accumulate`` micro-batches of ``(images, targets)``.

        Returns:
            Whether the step was taken (False when the loss or gradients were not finite:
            parameters, optimiser state and averages are then left untouched), and the
            losses averaged over the micro-batches and the ranks, with the weighted ``loss``
            and the gradient norm ``grad_norm`` (before clipping).
        """
        if not self.model.training:  # train() walks every submodule: only when evaluation switched it off
            self.model.train()
        count, last = len(micro_batches), len(micro_batches) - 1
        rows = []
        for index, batch in enumerate(micro_batches):
            # Gradients are all-reduced only on the last micro-step; the others just accumulate.
            no_sync = index < last and isinstance(self.model, nn.parallel.DistributedDataParallel)
            with self.model.no_sync() if no_sync else contextlib.nullcontext():
                total, losses = self._losses(batch)
                scaled = total / count if count > 1 else total
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            names = ["loss", *sorted(losses)]
            with torch.no_grad():
                rows.append(torch.stack([total, *(losses[n].float() for n in names[1:])]))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.clip_grad_norm > 0:
            norm = nn.utils.clip_grad_norm_(self._parameters, self.config.clip_grad_norm)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in self._parameters if p.grad is not None])
        # One small all-reduce and one CPU-GPU sync (.tolist()) per step serve both the
        # non-finite guard and the log. Every rank must take the same decision, and a sum
        # over ranks keeps any non-finite value non-finite. The gradient norm is the same on
        # every rank (DDP has averaged the gradients), so its mean over ranks is itself.
        values = torch.cat([norm.float().reshape(1), rows[0] if count == 1 else torch.stack(rows).mean(0)])
        if self.context.distributed:
            values = reduce_sum(values) / self.context.world_size
        norm_value, *loss_values = values.tolist()
        finite = math.isfinite(norm_value) and math.isfinite(loss_values[0])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.bad_in_row = 0
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self.bad_in_row += 1
            self.bad_total += 1
        if finite:
            self.scheduler.step()
        else:
            with warnings.catch_warnings():
                # A skipped step still advances the schedule; torch warns if it is the first one.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.scheduler.step()
        self.step += 1
        since_swa_start = self.step - self.config.swa_start
        swa_due = since_swa_start >= 0 and since_swa_start % self.config.swa_every == 0
        if finite and self.swa is not None and swa_due:
            self.swa.update(self.model)
        return finite, {**dict(zip(names, loss_values, strict=True)), "grad_norm": norm_value}

    def fit(self) -> dict[str, float]:
        """Train until ``total_steps``, evaluating and checkpointing on the way.

        Returns:
            The metrics of the last evaluation (empty without validation data).

        Raises:
            FloatingPointError: ``max_bad_steps`` steps in a row had a non-finite loss or
                gradient; the parameters are those of the last finite step.
            DistributedError: under ``torchrun``, another rank stalled for ``ddp_timeout``
                seconds or died.

        The run folder's lock is released when it returns or raises.
        """
        try:
            with collective_errors(self.config.ddp_timeout):
                return self._fit()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _fit(self) -> dict[str, float]:
        config, main = self.config, self.context.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.step == 0:
                self.log.reset()
            save_config(config, self.out / "config.yaml")
        bar = ProgressBar(self.total_steps, start=self.step, enabled=main and config.progress)
        meters: dict[str, RunningMean] = {}
        smooth = RunningMean(alpha=0.1)
        window_start, window_steps = time.perf_counter(), 0
        epoch, start_in_epoch = self._start_epoch, self._start_in_epoch
        saved_at = evaluated_at = self.step
        try:
            while self.step < self.total_steps:
                batches = self._epoch_batches(epoch, start_in_epoch)
                for _ in range(start_in_epoch, self.steps_per_epoch):
                    if self.step >= self.total_steps:
                        break
                    micro = [next(batches) for _ in range(config.accumulate)]
                    finite, losses = self.train_step(micro)
                    window_steps += 1
                    if finite:
                        for name, value in losses.items():
                            meters.setdefault(name, RunningMean()).update(value)
                        if bar.enabled:
                            smooth.update(losses["loss"])
                    elif self.bad_in_row >= config.max_bad_steps:
                        self._stop_non_finite(losses)
                    at_epoch_end = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
                    if self.step % config.log_every == 0 or at_epoch_end:
                        elapsed = time.perf_counter() - window_start
                        self._log_train(meters, epoch, window_steps / max(elapsed, 1e-9), bar)
                        meters, window_start, window_steps = {}, time.perf_counter(), 0
                    if bar.enabled:
                        lr = self.optimizer.param_groups[0]["lr"]
                        bar.update(self.step, f"loss {smooth.value:.4g}  lr {lr:.3g}  epoch {epoch + 1}")
                    metric = None
                    if self.val_loader is not None and (
                        (config.eval_every and self.step % config.eval_every == 0)
                        or (not config.eval_every and at_epoch_end)
                    ):
                        metric = self._run_evaluation(epoch, bar)
                        evaluated_at = self.step
                    if metric is not None or (
                        (config.save_every and self.step % config.save_every == 0)
                        or (not config.save_every and at_epoch_end)
                    ):
                        self._save(metric)
                        saved_at = self.step
                epoch, start_in_epoch = epoch + 1, 0
            bn_updated = self.swa is not None and self.swa.updates > 0 and _has_batch_norm(self.swa.module)
            if bn_updated:
                self.sampler.set_start(0)
                self.swa.update_bn(self.train_loader, device=self.device)
            if self.val_loader is not None and (evaluated_at != self.step or bn_updated):
                self._save(self._run_evaluation(epoch - 1, bar))
            elif saved_at != self.step:
                self._save()
        except KeyboardInterrupt:
            bar.close()
            if main:
                print(f"interrupted at step {self.step}; resume=true continues from the last checkpoint in {self.out}")
            raise
        finally:
            bar.close()
        if main:
            save_weights(self._eval_model(), self.out / "last.safetensors", self.weights_metadata)
            self.log.close()
            if config.plot:
                plot_curves(self.log.read(), self.out / "curves.png")
            if config.progress:
                for line in self._closing_lines():
                    print(line, flush=True)
        return dict(self.metrics)

    def _closing_lines(self) -> list[str]:
        """What the run wrote, and the command that evaluates its weights (when the task is known)."""
        names = ("best.safetensors", "last.safetensors", "best.pt", "last.pt", "metrics.jsonl", CSV_NAME, "curves.png")
        written = [name for name in names if (self.out / name).is_file()]
        if any(self.out.glob(EVENTS_PREFIX + "*")):
            written.append(f"TensorBoard events (tensorboard --logdir {shlex.quote(str(self.out))})")
        lines = [f"results in {self.out}: {', '.join(written)}"]
        task = self.weights_metadata.get("task") or getattr(self.config, "task", "")
        weights = self.out / ("best.safetensors" if (self.out / "best.safetensors").is_file() else "last.safetensors")
        if task:
            command = f"sightkit eval {task} weights={shlex.quote(str(weights))}"
            data = getattr(self.config, "data", "")
            if isinstance(data, str | Path) and str(data):
                command += f" data={shlex.quote(str(data))}"
            lines.append(f"next: {command}")
        return lines

    def _stop_non_finite(self, losses: Mapping[str, float]) -> None:
        shown = {name: f"{value:.4g}" for name, value in losses.items()}
        raise FloatingPointError(
            f"the loss or its gradients were not finite for {self.bad_in_row} optimiser steps in a row "
            f"(up to step {self.step}; last values {shown}); those steps were skipped, so the parameters are "
            f"those of step {self.step - self.bad_in_row}. Lower lr=, set clip_grad_norm=, use amp=bf16 "
            "instead of fp16, or check the data; max_bad_steps= sets how many in a row are tolerated"
        )

    def _log_train(self, meters: Mapping[str, RunningMean], epoch: int, steps_per_s: float, bar: ProgressBar) -> None:
        record: dict[str, Any] = {"kind": "train", "step": self.step, "epoch": epoch + 1}
        record.update({name: meters[name].value for name in sorted(meters)})
        record.update({"lr": self.optimizer.param_groups[0]["lr"], "it_s": steps_per_s, "bad_steps": self.bad_total})
        if self._replacer is not None:
            # Every rank logs at the same steps, so this sum is a collective all of them join.
            replaced = reduce_sum(torch.tensor([float(self._replacer.count.value)], device=self.device))
            record["bad_samples"] = self.preflight_skipped + int(replaced.item())
        self.log.write(record)
        if self.context.is_main and self.config.progress and not bar.enabled:
            # Without a terminal (CI logs, nohup) these lines are the progress bar: rate and ETA included.
            stats = _stats_line({k: record[k] for k in ("loss", "lr")})
            bar.print(f"step {self.step}/{self.total_steps}  epoch {epoch + 1}  {stats}  {bar.rate_and_eta(self.step)}")

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Evaluate the evaluation weights (``eval_weights``) on the validation data, on every rank."""
        if self.val_loader is None:
            raise ValueError("evaluate() needs val_data; pass val_data= to the Trainer")
        model = self._eval_model()
        was_training = model.training
        model.eval()
        try:
            with _autocast(self.device, self.config.amp):
                if self.evaluate_fn is not None:
                    metrics = dict(self.evaluate_fn(model, self.val_loader))
                else:
                    metrics = self._validation_loss(model)
        finally:
            model.train(was_training)
        return {name: float(value) for name, value in metrics.items()}

    def _validation_loss(self, model: nn.Module) -> dict[str, float]:
        names = self._loss_names
        sums: Tensor | None = None
        for batch in self.val_loader:
            images, targets = self._to_device(batch)
            losses = self.criterion(call_model(model, images), targets)
            if names is None:
                self._check_losses(losses)
                names = self._loss_names
            weights = self.loss_weights or dict.fromkeys(losses, 1.0)
            total = sum(weights[n] * losses[n].float() for n in weights)
            count = float(len(targets)) if isinstance(targets, Sequence) else float(images.shape[0])
            row = torch.stack([total.float(), *(losses[n].float() for n in names)]).double() * count
            row = torch.cat([row, row.new_tensor([count])])
            sums = row if sums is None else sums + row
        if sums is None:  # this rank's shard is empty; it still takes part in the sum
            sums = torch.zeros(len(names or ()) + 2, dtype=torch.float64, device=self.device)
        sums = reduce_sum(sums)
        count = sums[-1].clamp(min=1)
        keys = ["val_loss", *(f"val_{n}" for n in names or ())]
        return {key: (value / count).item() for key, value in zip(keys, sums[:-1], strict=True)}

    def _run_evaluation(self, epoch: int, bar: ProgressBar) -> float | None:
        self.metrics = self.evaluate()
        self.log.write({"kind": "val", "step": self.step, "epoch": epoch + 1, **self.metrics})
        if self.context.is_main and self.config.progress:
            bar.print(f"eval step {self.step}: {_stats_line(self.metrics)}")
        if self.config.best_metric not in self.metrics:
            raise ValueError(
                f"best_metric={self.config.best_metric!r} is not among the evaluation metrics "
                f"{sorted(self.metrics)}; set best_metric= to one of them"
            )
        return self.metrics[self.config.best_metric]


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
