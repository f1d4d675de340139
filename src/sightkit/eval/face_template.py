"""Many-to-one normalisation: a person's images pooled into one template.

A gallery that keeps every enrolled image as its own entry matches a probe against the best of
them, so one blurred, turned or half-covered enrolment image that happens to look like a
stranger's probe produces a false match, and nothing is learnt from the person's other images.
A *template* is the quality-weighted mean of the person's L2-normalised embeddings,
re-normalised (the set-to-set pooling of the IARPA Janus benchmarks, Klare et al., "Pushing the
frontiers of unconstrained face detection and recognition: IARPA Janus Benchmark A", CVPR 2015;
quality weighting as in Ranjan et al., "Crystal loss and quality pooling for unconstrained face
verification and recognition", 2018): nuisances that differ from image to image average out,
and a poor image weighs little. The per-image embeddings are kept, so best-of-images matching
(:func:`identity_scores` with ``mode="best"``) stays available.

Pure functions on tensors: :func:`pool_templates` builds templates, :func:`quality_weights`
turns a :class:`~sightkit.eval.FaceQuality` into pooling weights, :func:`identity_scores` scores
probes against a gallery by template or by best image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sightkit._api import export
from sightkit.eval.face_quality import FaceQuality

MODES = ("template", "best")


def _labels(labels: Tensor | Sequence[str], count: int) -> tuple[Tensor, list]:
    """``([G] int64 index into identities, identities)`` with identities sorted."""
    values = labels.tolist() if isinstance(labels, Tensor) else list(labels)
    if isinstance(labels, Tensor) and (labels.dim() != 1 or labels.is_floating_point()):
        raise ValueError(f"labels must be a 1-D integer tensor or a list of names, got {tuple(labels.shape)}")
    if len(values) != count:
        raise ValueError(f"labels must give one identity per embedding ({count}), got {len(values)}")
    identities = sorted(set(values))
    position = {value: k for k, value in enumerate(identities)}
    return torch.tensor([position[v] for v in values], dtype=torch.long), identities


def _check_embeddings(embeddings: Tensor, name: str) -> None:
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or not embeddings.is_floating_point():
        got = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
        raise ValueError(f"{name} must be a floating-point tensor [N, D], got {got}")


@export("eval.pool_templates")
def pool_templates(
    embeddings: Tensor, labels: Tensor | Sequence[str], weights: Tensor | None = None
) -> tuple[Tensor, list]:
    """One template per identity: ``normalise(sum_g w_g e_g / |e_g|)`` over the identity's images.

    Args:
        embeddings: ``[G, D]`` per-image embeddings (normalised here).
        labels: ``[G]`` integer identities, or G names.
        weights: ``[G]`` non-negative pooling weights (e.g. :func:`quality_weights`); ``None``:
            all 1. An identity whose weights are all 0 gets the plain mean of its images, so
            that an enrolled person never disappears.

    Returns:
        ``(templates [T, D] unit length, in embeddings' dtype, identities)`` with the T distinct
        identities sorted.
    """
    _check_embeddings(embeddings, "embeddings")
    index, identities = _labels(labels, embeddings.shape[0])
    if weights is None:
        weights = torch.ones(embeddings.shape[0], dtype=torch.float64)
    if not isinstance(weights, Tensor) or weights.shape != (embeddings.shape[0],):
        got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a tensor [G] = [{embeddings.shape[0]}], got {got}")
    weights = weights.double().cpu()
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    unit = F.normalize(embeddings.double().cpu(), dim=1)
    count = len(identities)
    total = torch.zeros(count, dtype=torch.float64).index_add_(0, index, weights)
    # A person whose every image has weight 0 falls back to equal weights.
    weights = torch.where(total[index] > 0, weights, torch.ones_like(weights))
    pooled = torch.zeros(count, unit.shape[1], dtype=torch.float64).index_add_(0, index, weights[:, None] * unit)
    return F.normalize(pooled, dim=1).to(device=embeddings.device, dtype=embeddings.dtype), identities


@export("eval.quality_weights")
def quality_weights(quality: FaceQuality, min_size: float = 24.0, sharpness_scale: float = 100.0) -> Tensor:
    """Pooling weights ``[N]`` from quality: ``cos(yaw)^2 cos(pitch) * s / (s + min_size) *
    q / (q + sharpness_scale)`` for size ``s`` pixels and sharpness ``q``.

    A frontal, large, sharp face weighs near 1; a profile (``|yaw| -> pi/2``), a face of
    ``min_size`` pixels (half) or one whose Laplacian variance is ``sharpness_scale`` (half)
    weighs less; the factors multiply. An unmeasured pose counts as frontal. The detector
    score is left out: it is already a gate (:class:`~sightkit.eval.QualityThresholds`).
    """
    if min_size < 0 or sharpness_scale < 0:
        raise ValueError(f"min_size and sharpness_scale must be >= 0, got {min_size} and {sharpness_scale}")
    yaw = torch.nan_to_num(quality.yaw.double(), nan=0.0)
    pitch = torch.nan_to_num(quality.pitch.double(), nan=0.0)
    size, sharpness = quality.size.double(), torch.nan_to_num(quality.sharpness.double(), nan=0.0)
    pose = yaw.cos().clamp_min(0).square() * pitch.cos().clamp_min(0)
    return pose * size / (size + min_size) * sharpness / (sharpness + sharpness_scale)


@export("eval.identity_scores")
def identity_scores(
    queries: Tensor,
    embeddings: Tensor,
    labels: Tensor | Sequence[str],
    mode: str = "template",
    weights: Tensor | None = None,
) -> tuple[Tensor, list]:
    """Cosine scores of probes against each gallery identity.

    Args:
        queries: ``[P, D]`` probe embeddings (normalised here).
        embeddings, labels, weights: the gallery's per-image embeddings ``[G, D]``, identities and
            pooling weights (see :func:`pool_templates`).
        mode: ``"template"`` (cosine with the identity's template) or ``"best"`` (the best cosine
            over the identity's images: the behaviour of a gallery of independent entries).

    Returns:
        ``(scores [P, T] float32, identities)``; the rank-1 identity of probe ``p`` is
        ``identities[scores[p].argmax()]``.
    """
    _check_embeddings(queries, "queries")
    _check_embeddings(embeddings, "embeddings")
    if queries.shape[1] != embeddings.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions, the gallery {embeddings.shape[1]}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    probes = F.normalize(queries.float().cpu(), dim=1)
    if mode == "template":
        templates, identities = pool_templates(embeddings.float().cpu(), labels, weights)
        return probes @ templates.T, identities
    index, identities = _labels(labels, embeddings.shape[0])
    similarity = probes @ F.normalize(embeddings.float().cpu(), dim=1).T
    best = similarity.new_full((probes.shape[0], len(identities)), -math.inf)
    best.scatter_reduce_(1, index.expand_as(similarity), similarity, reduce="amax")
    return best, identities
