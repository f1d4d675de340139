"""Exported ONNX files as predictors: ``sightkit.load("model.onnx")`` and ``sightkit predict TASK
weights=model.onnx`` run the graph with onnxruntime and give the Results of the PyTorch weights.

``sightkit export onnx`` writes the weights file's metadata into the graph's ``metadata_props``
(task, model, class names and ids, mean/std, input size, the deployed postprocess); from them
the task (``Task.onnx_predictor``) rebuilds its predictor around an :class:`OnnxModel`, which
onnxruntime runs in place of the PyTorch module. Preprocessing is the PyTorch predictor's:

- detect (:class:`OnnxDetectPredictor`): each image resized as in evaluation (shorter side
  ``imgsz``, longer at most ``max_size``); the graph pads to a multiple of 32 with the padding
  mask and applies the family's postprocess (top-k or NMS), so images of one size run as one
  batch and the others one by one; boxes come back in the resized image's pixels and are
  scaled to the original's;
- segment and pose: the task's own predictor, its module replaced by the :class:`OnnxModel`;
- face_detect (:class:`OnnxFaceDetectPredictor`): the PyTorch predictor's resize and padded
  batch, which the graph (dynamic height and width) takes as it is;
- face (:class:`OnnxFacePredictor`): the PyTorch predictor's crops (whole images or the faces of
  ``detector=``, itself a weights or ONNX file); the flip test adds the graph's raw ``features``
  of a crop and its mirror before normalising, as :func:`~sightkit.models.embed_faces` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision import tv_tensors

from sightkit._api import export
from sightkit.predictor import Predictor, frame_results, image_tensor, resolve_device
from sightkit.tasks.detect import TASK as DETECT
from sightkit.tasks.detect import DetectPredictor
from sightkit.tasks.face import FacePredictor
from sightkit.tasks.face_detect import FaceDetectPredictor
from sightkit.tasks.registry import Task

if TYPE_CHECKING:
    from sightkit.results import Results


@export("tasks.OnnxModel")
class OnnxModel(nn.Module):
    """An ONNX file run by onnxruntime, called like the module it was exported from: tensors in
    the order of the graph's inputs; one tensor out for a graph with one output, else a dict of
    the outputs by name (on the inputs' device).

    Args:
        path: the ``.onnx`` file.
        device: CUDA runs on onnxruntime's CUDA provider when it has one, else on the CPU.
        threads: onnxruntime's intra-op threads (0: torch's ``get_num_threads()``).

    Attributes:
        metadata: the graph's ``metadata_props``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: onnxruntime cannot read it.
    """

    def __init__(self, path: str | Path, device: str | torch.device | None = "cpu", threads: int = 0) -> None:
        super().__init__()
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"weights={str(path)!r} does not exist")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only: the warnings are about graph optimisations
        providers = ["CPUExecutionProvider"]
        if resolve_device(device).type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own error types for unreadable graphs
            raise ValueError(f"weights={str(path)!r} is not an ONNX file onnxruntime can run ({error})") from None
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names = [node.name for node in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, *inputs: Tensor) -> Tensor | dict[str, Tensor]:
        if len(inputs) != len(self.input_names):
            raise TypeError(
                f"{self.path.name} takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}"
            )
        feeds = {name: value.detach().cpu().numpy() for name, value in zip(self.input_names, inputs, strict=True)}
        outputs = [torch.from_numpy(value).to(inputs[0].device) for value in self.session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else dict(zip(self.output_names, outputs, strict=True))

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, providers={self.session.get_providers()}"


@export("tasks.OnnxDetectPredictor")
class OnnxDetectPredictor(DetectPredictor):
    """A detector exported by ``sightkit export onnx`` (postprocess inside), called on images like
    :class:`~sightkit.tasks.DetectPredictor`: the same Results as the PyTorch weights.

    Options: ``conf`` (default 0.5) and ``top_k``, at most the export's (its ``top_k`` metadata).
    """

    options: ClassVar[dict[str, Any]] = {"conf": 0.5, "top_k": 100}

    def __init__(self, model: nn.Module, metadata: dict[str, str], device: Any = None) -> None:
        super().__init__(model, metadata, device)
        self.top_k = int(metadata["top_k"])
        self.options = {**type(self).options, "top_k": self.top_k}

    def preprocess(self, frames: Sequence[Any], settings: dict[str, Any]) -> list[Tensor]:
        return [self.transforms(tv_tensors.Image(image_tensor(f))).as_subclass(Tensor).to(self.device) for f in frames]

    def forward(self, inputs: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``(boxes, scores, labels)`` of each image; images of the batch's first size run as one
        batch (a video's frames), any others one by one (the graph pads a batch to one size, which
        would change the numbers of the smaller images)."""
        if all(image.shape == inputs[0].shape for image in inputs):
            found = self.model(torch.stack(inputs))
            return list(zip(found["boxes"], found["scores"], found["labels"], strict=True))
        return [self.forward([image])[0] for image in inputs]

    def postprocess(
        self,
        outputs: list[tuple[Tensor, Tensor, Tensor]],
        inputs: list[Tensor],
        frames: Sequence[Any],
        settings: dict[str, Any],
    ) -> list[Results]:
        results = []
        for (boxes, scores, labels), image, frame in zip(outputs, inputs, frames, strict=True):
            # The graph's boxes are in the resized image's pixels; the Results', the original's.
            (height, width), (resized_height, resized_width) = frame.image.shape[:2], image.shape[-2:]
            scale = boxes.new_tensor([width / resized_width, height / resized_height] * 2)
            keep = (labels >= 0) & (scores >= settings["conf"])
            keep[settings["top_k"] :] = False
            results.append(
                frame_results(
                    frame, DETECT, self.names, category_ids=self.category_ids,
                    boxes=boxes[keep] * scale, scores=scores[keep], labels=labels[keep],
                )
            )  # fmt: skip
        return results


@export("tasks.OnnxFaceDetectPredictor")
class OnnxFaceDetectPredictor(FaceDetectPredictor):
    """A face detector exported by ``sightkit export onnx`` (raw ``logits``, ``boxes``,
    ``landmarks``; dynamic batch, height and width), called on images like
    :class:`~sightkit.tasks.FaceDetectPredictor`: the same resize, padded batch and
    postprocess (NMS, boxes scaled to the original's pixels and clipped to it), so the same
    Results up to onnxruntime's float rounding.

    Raises:
        ValueError: the graph's input has a fixed height or width (files exported before the
            export made them dynamic): the predictor's batches have other sizes.
    """

    def __init__(self, model: nn.Module, metadata: dict[str, str], device: Any = None) -> None:
        height, width = model.session.get_inputs()[0].shape[-2:]
        if isinstance(height, int) or isinstance(width, int):
            raise ValueError(
                f"weights={str(model.path)!r} takes images of a fixed size {height} x {width}, while the predictor "
                "resizes each image by its aspect ratio; export the .safetensors weights again with `sightkit export "
                "onnx`, whose graph takes any height and width"
            )
        super().__init__(model, metadata, device)


class _RawFeatures(nn.Module):
    """An exported face embedder called as :func:`~sightkit.models.embed_faces` calls an
    embedder: crops in, the graph's raw ``features`` out (its unit ``embedding`` for a file
    without them)."""

    def __init__(self, model: OnnxModel, num_features: int) -> None:
        super().__init__()
        self.onnx, self.num_features = model, num_features

    def forward(self, crops: Tensor) -> Tensor:
        outputs = self.onnx(crops)
        return outputs["features"] if isinstance(outputs, dict) else outputs


@export("tasks.OnnxFacePredictor")
class OnnxFacePredictor(FacePredictor):
    """A face embedder exported by ``sightkit export onnx``, called on images like
    :class:`~sightkit.tasks.FacePredictor` (options ``conf``, ``detector``, ``flip``): the same
    crops and ``Results.embeddings`` up to onnxruntime's float rounding.

    The graph's ``embedding`` is already normalised; the flip test needs the raw ``features``
    (the embedding of a crop and of its mirror are added before normalising), which files
    exported since the ``features`` output was added carry. Files with ``embedding`` alone give
    the exact embeddings without flip; with flip they add the two unit embeddings, which weighs
    the crop and its mirror equally (the PyTorch predictor weighs them by their feature norms).
    """

    def __init__(self, model: nn.Module, metadata: dict[str, str], device: Any = None) -> None:
        size = model.session.get_outputs()[0].shape[-1]
        num_features = size if isinstance(size, int) else int(metadata["embedding"])
        super().__init__(_RawFeatures(model, num_features), metadata, device)


@export("tasks.load_onnx")
def load_onnx(weights: str | Path, device: str | torch.device | None = None, task: Task | None = None) -> Predictor:
    """The :class:`~sightkit.Predictor` of an ONNX file written by ``sightkit export onnx``
    (:func:`sightkit.load` for ``.onnx`` files).

    Args:
        weights: the ``.onnx`` file.
        device: as for :func:`sightkit.load`.
        task: when given, the file must be of this task.

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        ValueError: it is not an ONNX file, lacks sightkit's metadata, or is of another task or
            one whose ONNX files sightkit does not run.
    """
    from sightkit.tasks.registry import get_task, list_tasks, metadata_task

    model = OnnxModel(weights, device)
    name = metadata_task(model.metadata)
    if name not in list_tasks() or "model" not in model.metadata:
        raise ValueError(
            f"weights={str(weights)!r} has no sightkit metadata (task={name!r}); "
            "use an ONNX file written by `sightkit export onnx`"
        )
    if task is not None and name != task.name:
        raise ValueError(f"weights={str(weights)!r} is a {name} model, not {task.name}")
    return get_task(name).onnx_predictor(model, model.metadata, resolve_device(device))
