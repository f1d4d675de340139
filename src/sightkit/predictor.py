"""The user's way in: ``sightkit.load(weights) -> Predictor`` and ``predictor(source) -> [Results]``.

A :class:`Predictor` holds a model rebuilt from a weights file and what its metadata says
(class names, input size, normalisation). Calling it reads ``source`` through
:func:`sightkit.data.sources.iter_source` (a path, folder, glob, list, PIL image, numpy
``[H, W, 3]`` uint8 RGB array, torch tensor, video file or http(s) URL), runs the model on
batches of frames and returns one :class:`~sightkit.results.Results` per image or video
frame::

    import sightkit

    detector = sightkit.load("runs/detect/train/best.safetensors")
    results = detector("photos/", batch=8)              # a list, with a progress bar
    for r in detector("clip.mp4", stream=True):        # a generator: constant memory on video
        print(r.frame, r.to_dict())

Each task subclasses :class:`Predictor` with three steps, ``preprocess(frames, options)``
(pixels -> model inputs), ``forward(inputs)`` and ``postprocess(outputs, inputs, frames,
options) -> [Results]``; ``options`` are the task's keyword settings (``conf``, ``top_k``, ...)
with their defaults from :attr:`Predictor.options`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.engine.precision import autocast_context, check_precision, prepare_for_inference

if TYPE_CHECKING:
    from sightkit.data.sources import Frame
    from sightkit.results import Results

ON_ERROR = ("skip", "stop")
#: Options every task's predictor takes: ``precision`` ("fp32" or "bf16", autocast around the model call).
COMMON_OPTIONS: dict[str, Any] = {"precision": "fp32"}


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``device=`` of the commands and of :func:`load`: the device it names, or ``cuda`` when
    there is one and ``cpu`` otherwise (``None`` or ``''``)."""
    if isinstance(name, torch.device):
        return name
    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pad_images(images: Sequence[Tensor], size_divisible: int = 32) -> tuple[Tensor, Tensor]:
    """Stack ``[3, h_i, w_i]`` images top-left into a zero-padded ``[B, 3, H, W]`` batch, ``H``
    and ``W`` rounded up to a multiple of ``size_divisible``; also the padding mask ``[B, H, W]``
    (True on padding)."""
    height = -(-max(image.shape[-2] for image in images) // size_divisible) * size_divisible
    width = -(-max(image.shape[-1] for image in images) // size_divisible) * size_divisible
    batch = torch.stack([F.pad(im, (0, width - im.shape[-1], 0, height - im.shape[-2])) for im in images])
    mask = torch.ones(len(images), height, width, dtype=torch.bool)
    for i, image in enumerate(images):
        mask[i, : image.shape[-2], : image.shape[-1]] = False
    return batch, mask


@export("sightkit.Predictor")
class Predictor:
    """A model rebuilt from a weights file, called on images.

    Attributes:
        task: the task's name (``detect``, ``pose``, ...).
        options: the keyword options ``__call__`` accepts for this task, with their defaults.
        model: the network, in eval mode on :attr:`device`.
        metadata: the weights file's metadata (str -> str).
        names: class names by label index (``[]`` for tasks without classes).
        skipped: ``(path, reason)`` of the unreadable files the last call skipped.
    """

    task: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: nn.Module, metadata: dict[str, str], device: str | torch.device | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.metadata = dict(metadata)
        self.names: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._companions: dict[str, Predictor] = {}
        # precision -> (the model it was prepared from, its weights' versions then, the prepared model)
        self._prepared: dict[str, tuple[nn.Module, list[Tensor], int, nn.Module]] = {}
        # predict_frames puts the prepared model in self.model for the forward call only
        self._forward_lock = threading.RLock()

    @property
    def name(self) -> str:
        """The model's registry name."""
        return self.metadata.get("model", type(self.model).__name__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, model={self.name!r}, device={str(self.device)!r})"

    def __call__(
        self,
        source: Any,
        *,
        stream: bool = False,
        batch: int = 1,
        conf: float | None = None,
        on_error: str = "skip",
        progress: bool | None = None,
        max_pixels: int | None = None,
        **options: Any,
    ) -> list[Results] | Iterator[Results]:
        """Predict on every image or video frame of ``source``.

        Args:
            source: a path, folder, glob, list of these, PIL image, numpy ``[H, W, 3]`` uint8 RGB
                array, torch tensor (``[3, H, W]`` or ``[B, 3, H, W]``, uint8 or floats in [0, 1]),
                video file (frames streamed) or http(s) URL.
            stream: return a generator that yields the results one by one (constant memory on
                a video) instead of a list.
            batch: images per forward pass.
            conf: keep predictions scoring at least this (None: the task's default).
            on_error: an unreadable file is ``"skip"``-ped (listed in :attr:`skipped`) or ``"stop"``-s
                the call (:class:`~sightkit.data.sources.SourceError`).
            progress: show a progress bar (None: when the source has more than one file or is a video).
            max_pixels: an image file or URL of more pixels is unreadable like a corrupt one
                (``on_error``); ``None``: Pillow's limit; 0: none.
            options: the task's own options (:attr:`options`).

        Returns:
            One :class:`~sightkit.results.Results` per image or frame, in the source's order.

        Raises:
            TypeError: an option this task does not have.
            ValueError: ``batch`` < 1 or ``on_error`` not ``"skip"``/``"stop"``.
        """
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        settings = self.settings(conf=conf, **options)
        results = self._stream(source, batch, on_error, progress, settings, max_pixels)
        return results if stream else list(results)

    def settings(self, **given: Any) -> dict[str, Any]:
        """The task's options: :attr:`options` overridden by the ``given`` ones that are not None.

        Raises:
            TypeError: a name that is not one of the task's options.
        """
        options = {**COMMON_OPTIONS, **self.options}
        unknown = sorted(set(given) - set(options))
        if unknown:
            raise TypeError(
                f"{self.task} predictors take the options {', '.join(sorted(options))}; got {', '.join(unknown)}"
            )
        settings = {**options, **{k: v for k, v in given.items() if v is not None}}
        check_precision(settings["precision"])
        return settings

    def _stream(
        self,
        source: Any,
        batch: int,
        on_error: str,
        progress: bool | None,
        settings: dict[str, Any],
        max_pixels: int | None = None,
    ) -> Iterator[Results]:
        from rich.progress import Progress

        from sightkit.data.sources import count_source, iter_source

        self.skipped = []
        total = count_source(source)
        show = progress if progress is not None else total is None or total > 1
        frames = iter_source(source, on_error=on_error, report=self._skip, max_pixels=max_pixels)
        with Progress(transient=True, disable=not show) as bar:
            task = bar.add_task(f"{self.task}", total=total)
            while chunk := list(itertools.islice(frames, batch)):
                yield from self.predict_frames(chunk, settings)
                bar.advance(task, len(chunk))

    def companion(self, value: Predictor | str | Path | None, task: str) -> Predictor | None:
        """A predictor of ``task`` that this one runs first (pose: a detector; face: a face
        detector): ``value`` itself, or the weights file it names loaded once on this device."""
        if not isinstance(value, str | Path) or not str(value):
            return value or None
        if str(value) not in self._companions:
            from sightkit.tasks.registry import get_task
            from sightkit.tasks.runner import load_for

            self._companions[str(value)] = load_for(get_task(task), value, self.device)
        return self._companions[str(value)]

    def _skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))

    @torch.inference_mode()
    def predict_frames(self, frames: Sequence[Frame], settings: dict[str, Any]) -> list[Results]:
        """The results of one batch of frames (``settings`` as :meth:`settings` returns them)."""
        inputs = self.preprocess(frames, settings)
        precision = settings["precision"]
        with self._forward_lock:
            model, self.model = self.model, self.inference_model(precision)
            try:  # the model call only under autocast: postprocessing in float32
                with autocast_context(precision, self.device):
                    outputs = self.forward(inputs)
            finally:
                self.model = model
        return self.postprocess(outputs, inputs, frames, settings)

    def inference_model(self, precision: str) -> nn.Module:
        """The network :meth:`predict_frames` runs at ``precision``: :attr:`model` at ``"fp32"``; at
        ``"bf16"`` its copy with channels-last, bfloat16 convolution and linear weights
        (:func:`~sightkit.engine.precision.prepare_for_inference`), made once and again only when
        :attr:`model` is replaced or its weights change in place."""
        if check_precision(precision) == "fp32":
            return self.model
        # Any in-place change of a parameter or buffer (load_state_dict, an optimiser step) bumps its
        # version; tensors made under inference_mode (a companion model loaded during a call) have
        # none. The list of tensors is kept with the copy: listing them on every call took 0.3 ms.
        source, tensors, source_version, prepared = self._prepared.get(precision, (None, [], -1, None))
        if source is not self.model:
            everything = itertools.chain(self.model.parameters(), self.model.buffers())
            tensors = [tensor for tensor in everything if not tensor.is_inference()]
        version = sum(tensor._version for tensor in tensors)
        if source is not self.model or source_version != version:
            prepared = prepare_for_inference(self.model, precision)
            self._prepared[precision] = (self.model, tensors, version, prepared)
        return prepared

    def preprocess(self, frames: Sequence[Frame], settings: dict[str, Any]) -> Any:
        """The model's inputs for a batch of frames."""
        raise NotImplementedError

    def forward(self, inputs: Any) -> Any:
        """The model's raw outputs."""
        return self.model(inputs)

    def postprocess(
        self, outputs: Any, inputs: Any, frames: Sequence[Frame], settings: dict[str, Any]
    ) -> list[Results]:
        """One :class:`~sightkit.results.Results` per frame, in the frames' pixels."""
        raise NotImplementedError


def frame_results(frame: Frame, task: str, names: Sequence[str], **fields: Any) -> Results:
    """The :class:`~sightkit.results.Results` of ``frame`` with ``fields`` (tensors are moved to the CPU)."""
    from sightkit.results import Results

    return Results(image=frame.image, path=frame.path, frame=frame.index, task=task, names=list(names), **fields)


def image_tensor(frame: Frame) -> Tensor:
    """A frame's pixels as a uint8 ``[3, H, W]`` tensor (shares memory with the frame)."""
    return torch.from_numpy(frame.image).permute(2, 0, 1)


def weights_file(weights: str | Path) -> str | Path:
    """A sightkit weights file for ``weights``: itself, or, for a weight source (``hf:ORG/NAME``,
    ``torchvision:``, ``https://``, a foreign ``.pth``/``.pt``/``.bin`` checkpoint or a
    ``save_pretrained`` folder), its conversion, imported once into sightkit's cache
    (:func:`sightkit.weights.as_weights_file`)."""
    from sightkit.weights.resolve import SCHEMES

    path = Path(weights)
    foreign = path.exists() and (path.is_dir() or path.suffix in (".pth", ".pt", ".bin"))
    if str(weights).startswith(SCHEMES) or foreign:
        from sightkit.weights import as_weights_file

        return as_weights_file(str(weights))
    return weights


@export("sightkit.load")
def load(weights: str | Path, device: str | torch.device | None = None) -> Predictor:
    """The :class:`Predictor` of a ``.safetensors`` weights file of any task (its metadata names
    the task and rebuilds the model), or of an ``.onnx`` file that ``sightkit export onnx`` wrote
    (run by onnxruntime with the same preprocessing, :mod:`sightkit.tasks.onnx_predictor`).

    Args:
        weights: a file written by ``sightkit train`` (or ``sightkit weights import``), or an
            exported ``.onnx`` file (detect, segment, pose).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:K"``; None: CUDA when available.

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        ValueError: it is not a safetensors file written by sightkit, or names no known task.
    """
    from sightkit.tasks.common import read_metadata
    from sightkit.tasks.registry import task_of_metadata

    if Path(weights).suffix == ".onnx":
        from sightkit.tasks.onnx_predictor import load_onnx

        return load_onnx(weights, device)
    weights = weights_file(weights)
    metadata = read_metadata(weights)
    task = task_of_metadata(metadata, weights)
    return task.load(weights, metadata, resolve_device(device))
