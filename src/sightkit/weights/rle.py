"""The official RLE ``RegressFlow`` checkpoints (Jeff-sjtu/res-loglikelihood-regression) ->
:func:`~sightkit.models.rle_r50` (Li et al., "Human Pose Regression with Residual
Log-likelihood Estimation", ICCV 2021).

The official model names its ResNet ``preact`` (torchvision's names), its coordinate and
scale heads ``fc_coord.linear`` / ``fc_sigma.linear`` (a "normalised" linear layer, as
sightkit's :class:`~sightkit.models.pose.NormalizedLinear`) and its RealNVP ``flow`` with
``mask``, ``s.i`` and ``t.i``, the names of :class:`~sightkit.nn.RealNVP`.

Its crops are 256 x 192 RGB in [0, 1] from which (0.406, 0.457, 0.480) is subtracted per
channel, without division by a standard deviation (``SimpleTransform``); the metadata
records that normalisation, so that predictions see what the network was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from torch import Tensor

from sightkit.data.coco import COCO_KEYPOINT_NAMES, COCO_SKELETON, keypoint_flip_pairs
from sightkit.weights import resnet
from sightkit.weights.layout import Converted, rename
from sightkit.weights.sources import Fetched

FAMILY = "rle"
#: The official transform's per-channel offsets (RGB order) and unit scale.
MEAN, STD = (0.406, 0.457, 0.480), (1.0, 1.0, 1.0)
INPUT_SIZE = (256, 192)


def recognise(state: Mapping[str, Tensor]) -> bool:
    return "preact.conv1.weight" in state and "fc_coord.linear.weight" in state and "flow.mask" in state


def from_regressflow(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official RegressFlow names -> sightkit's RLEPose names (module docstring)."""
    body = resnet.to_body(rename(state, "preact.", ""))
    out = {f"backbone.body.{k}": v for k, v in body.items()}
    out.update(rename(state, "fc_coord.linear.", "coords.linear."))
    out.update(rename(state, "fc_sigma.linear.", "sigma.linear."))
    out.update(rename(state, "flow.", "flow."))
    return out


def convert(fetched: Fetched) -> Converted:
    """An official RLE checkpoint -> ``rle_r50`` weights and COCO pose metadata."""
    state = fetched.state
    backbone = resnet.resnet_name(rename(state, "preact.", ""))
    num_keypoints = state["fc_coord.linear.weight"].shape[0] // 2
    if num_keypoints != len(COCO_KEYPOINT_NAMES):
        raise ValueError(
            f"{fetched.source}: an RLE model of {num_keypoints} keypoints; the converter knows COCO's "
            f"{len(COCO_KEYPOINT_NAMES)} (names, flip pairs and skeleton)"
        )
    metadata = {
        "task": "pose",
        "input_size": json.dumps(list(INPUT_SIZE)),
        "keypoint_names": json.dumps(list(COCO_KEYPOINT_NAMES)),
        "flip_pairs": json.dumps([list(p) for p in keypoint_flip_pairs(COCO_KEYPOINT_NAMES)]),
        "skeleton": json.dumps([list(p) for p in COCO_SKELETON]),
        "category_id": "1",
        "upsample": "deconv",
        "decode": "taylor",
        "padding": "1.25",
        "mean": json.dumps(list(MEAN)),
        "std": json.dumps(list(STD)),
        "source": fetched.source,
        "source_layout": f"{FAMILY}/regressflow",
    }
    model_args = {} if backbone == "resnet50" else {"backbone": backbone}
    return Converted(f"{FAMILY}/regressflow", "rle_r50", model_args, from_regressflow(state), metadata)
