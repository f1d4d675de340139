"""Non-maximum suppression: plain and per-class NMS (torchvision's kernels), DIoU-NMS and Soft-NMS.

Boxes are ``xyxy`` ``[N, 4]``, scores ``[N]``. Every function returns indices into the input
in the order the boxes were selected, which is by decreasing (rescored) score; equal scores
go by increasing index. Half-precision inputs are computed in float32.

``nms`` and ``batched_nms`` call torchvision's C++ kernels. torchvision has neither DIoU-NMS
nor Soft-NMS, so both are written here in vectorised torch on one engine, :func:`_decay_select`:
greedy NMS is Soft-NMS whose decay drops a suppressed score to zero. The per-class forms leave
pairs of different classes out of the overlap graph instead of offsetting coordinates as
torchvision does, so they lose no float precision on large offsets.

References: DIoU-NMS, Zheng et al., "Distance-IoU Loss", AAAI 2020; Soft-NMS, Bodla et al.,
"Soft-NMS -- Improving Object Detection With One Line of Code", ICCV 2017.
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

from sightkit._api import export
from sightkit.ops.boxes import check_boxes, elementwise_box_iou, elementwise_distance_box_iou

SOFT_NMS_METHODS = ("linear", "gaussian")

# Rows of the sweep's overlap test computed at once: bounds its memory to _BLOCK * N booleans.
_BLOCK = 256
# The overlap graph is kept while it has at most this many pairs (about 100 bytes each at the
# peak); denser inputs go straight to the sequential algorithm, which needs O(N) memory.
_MAX_PAIRS = 1 << 20
# Each round looks at the best boxes only, at least this many (see _decay_rounds).
_MIN_BAND = 128
# The Python and dispatch overhead of one sequential step, in edges a round could visit instead.
_STEP_COST = 4096
# The overlap measures by name, element-wise on matched pairs of boxes.
_MEASURES = {"iou": elementwise_box_iou, "diou": elementwise_distance_box_iou}


def _check_threshold(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _check_boxes_scores(boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Validate ``boxes [N, 4]`` and ``scores [N]`` and bring both to one float dtype (float32 or wider)."""
    boxes = check_boxes(boxes, "boxes")
    if boxes.ndim != 2:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a torch.Tensor of shape [N], got {type(scores).__name__}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must have shape [N] = [{boxes.shape[0]}] to match boxes, got {tuple(scores.shape)}")
    if scores.device != boxes.device:
        raise ValueError(f"scores must be on the device of boxes ({boxes.device}), got {scores.device}")
    dtype = torch.promote_types(boxes.dtype, scores.dtype)
    return boxes.to(dtype), scores.to(dtype)


def _check_finite(boxes: Tensor, scores: Tensor) -> None:
    """The sweep and the decays need real numbers: NaN or infinite inputs are errors, not garbage out."""
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes must be finite, got NaN or infinite coordinates")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite, got NaN or infinite scores")


def _check_idxs(idxs: Tensor, boxes: Tensor) -> Tensor:
    if not isinstance(idxs, Tensor):
        raise TypeError(f"idxs must be a torch.Tensor of shape [N], got {type(idxs).__name__}")
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise TypeError(f"idxs must hold integer class indices, got dtype {idxs.dtype}")
    if idxs.shape != boxes.shape[:1]:
        raise ValueError(f"idxs must have shape [N] = [{boxes.shape[0]}] to match boxes, got {tuple(idxs.shape)}")
    if idxs.device != boxes.device:
        raise ValueError(f"idxs must be on the device of boxes ({boxes.device}), got {idxs.device}")
    return idxs


def _empty_indices(boxes: Tensor) -> Tensor:
    return torch.empty(0, dtype=torch.int64, device=boxes.device)


@export("ops.nms")
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: keep the best box, drop every box whose IoU with it
    exceeds ``iou_threshold``, repeat (torchvision's C++ kernel).

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``.
        iou_threshold: boxes with IoU ``> iou_threshold`` with a kept box are dropped.

    Returns:
        ``[K]`` int64 indices of the kept boxes, by decreasing score.
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    if boxes.shape[0] == 0:
        return _empty_indices(boxes)
    return torchvision.ops.nms(boxes, scores, iou_threshold)


@export("ops.batched_nms")
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """:func:`nms` within each class: boxes of different ``idxs`` never suppress each other
    (torchvision's ``batched_nms``).

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``.
        idxs: ``[N]`` integer class of each box.
        iou_threshold: boxes with IoU ``> iou_threshold`` with a kept box of their class are dropped.

    Returns:
        ``[K]`` int64 indices of the kept boxes, by decreasing score.
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    idxs = _check_idxs(idxs, boxes)
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    if boxes.shape[0] == 0:
        return _empty_indices(boxes)
    return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)


class _Decay:
    """How a selected box rescales the score of another box from their overlap ``v`` (IoU or DIoU):

    - ``"gaussian"``: ``exp(-v² / sigma)``;
    - ``"linear"``: ``1 - v`` when ``v > threshold``, else 1;
    - ``"hard"``: 0 when ``v > threshold``, else 1 (greedy NMS).

    Pairs with ``v <= min_overlap`` keep their scores, so only they can be left out of the graph.
    """

    def __init__(self, method: str, measure: str, threshold: float = 0.0, sigma: float = 1.0) -> None:
        self.method, self.threshold, self.sigma = method, threshold, sigma
        self.measure = _MEASURES[measure]
        self.min_overlap = 0.0 if method == "gaussian" else threshold

    def factor(self, overlap: Tensor) -> Tensor:
        if self.method == "gaussian":
            return torch.exp(-(overlap * overlap) / self.sigma)
        decayed = 1 - overlap if self.method == "linear" else torch.zeros_like(overlap)
        return torch.where(overlap > self.threshold, decayed, 1.0)

    def log_factor(self, overlap: Tensor) -> Tensor:
        """``log(factor)`` for overlaps ``> min_overlap``; ``-inf`` where the decay is to zero."""
        if self.method == "gaussian":
            return -(overlap * overlap) / self.sigma
        if self.method == "linear":
            return torch.log1p(-overlap)
        return torch.full_like(overlap, -math.inf)


def _decaying_pairs(
    boxes: Tensor, candidates: Tensor, idxs: Tensor | None, decay: _Decay
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Pairs ``(first, second, overlap)`` of ``candidates`` of the same class whose overlap is
    ``> decay.min_overlap``, each pair once; ``None`` when there are more than ``_MAX_PAIRS``.

    Only boxes that intersect with positive area can have such an overlap (``min_overlap >= 0``).
    They are found by sort and sweep along x: after sorting by ``x1`` a box can only intersect
    the boxes that follow it up to the first one starting at or beyond its ``x2``, so each
    block of rows is tested against that window of columns instead of against all boxes.
    """
    order = candidates[boxes[candidates, 0].argsort()]
    x1, y1, x2, y2 = (coordinate.contiguous() for coordinate in boxes[order].unbind(1))
    classes = idxs[order] if idxs is not None else None
    window_ends = torch.searchsorted(x1, x2)
    # Pairs are taken once, as (row, later column): a triangle on the block's own columns.
    later = torch.ones(_BLOCK, _BLOCK, dtype=torch.bool, device=boxes.device).triu_(1)
    firsts, seconds, overlaps = [], [], []
    found = 0
    for start in range(0, order.shape[0], _BLOCK):
        stop = min(start + _BLOCK, order.shape[0])
        end = int(window_ends[start:stop].max())
        if end <= start + 1:
            continue
        rows, cols = slice(start, stop), slice(start, end)
        hit = x1[None, cols] < x2[rows, None]
        hit &= y1[None, cols] < y2[rows, None]
        hit &= y1[rows, None] < y2[None, cols]
        hit[:, : stop - start] &= later[: stop - start, : stop - start]
        if classes is not None:
            hit &= classes[rows, None] == classes[None, cols]
        row, col = hit.nonzero().unbind(1)
        first, second = order.index_select(0, start + row), order.index_select(0, start + col)
        overlap = decay.measure(boxes.index_select(0, first), boxes.index_select(0, second))
        decays = (overlap > decay.min_overlap).nonzero().squeeze(1)
        found += decays.shape[0]
        if found > _MAX_PAIRS:
            return None
        firsts.append(first.index_select(0, decays))
        seconds.append(second.index_select(0, decays))
        overlaps.append(overlap.index_select(0, decays))
    if not firsts:
        return _empty_indices(boxes), _empty_indices(boxes), boxes.new_empty(0)
    return torch.cat(firsts), torch.cat(seconds), torch.cat(overlaps)


def _overlap_graph(
    boxes: Tensor, candidates: Tensor, idxs: Tensor | None, decay: _Decay
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """The pairs whose scores decay, as adjacency lists: ``(row_start, degree, neighbour,
    log_factor)`` with the neighbours of box ``i`` at ``row_start[i] : row_start[i] + degree[i]``.
    ``None`` when the graph would be too large."""
    pairs = _decaying_pairs(boxes, candidates, idxs, decay)
    if pairs is None:
        return None
    first, second, overlap = pairs
    log_factor = decay.log_factor(overlap)
    owner = torch.cat((first, second))
    # int32 keys sort faster (radix sort) and node ids fit.
    by_owner = owner.to(torch.int32).argsort(stable=True)
    degree = torch.bincount(owner, minlength=boxes.shape[0])
    row_start = degree.cumsum(0) - degree
    neighbours = torch.cat((second, first)).index_select(0, by_owner)
    return row_start, degree, neighbours, torch.cat((log_factor, log_factor)).index_select(0, by_owner)


def _decay_rounds(
    scores: Tensor, active: Tensor, graph: tuple[Tensor, Tensor, Tensor, Tensor], score_threshold: float
) -> tuple[list[Tensor], list[Tensor]]:
    """Select many boxes per step: every active box that beats all the active boxes it
    overlaps (a local maximum of the overlap graph) is selected with its current score.

    Why this equals the sequential algorithm: boxes that do not overlap never change each
    other's score, and scores only decrease. A local maximum therefore keeps its score, and its
    neighbours stay below it, until the sequential algorithm reaches it; the decays it then
    gives its neighbours multiply with the others in any order. Two local maxima are never
    neighbours. Ties go to the lower index, as the sequential ``argmax`` does.

    Only the band of the best ``band_size`` boxes is examined per round: a box outside it
    cannot beat a box inside, so the band's local maxima are local maxima of the whole graph,
    and a round costs the degree of ``band_size`` boxes instead of the whole graph.

    Updates ``scores`` and ``active`` in place, and returns early when a round selects so few
    boxes that the sequential algorithm is cheaper for the rest (dense clusters).
    """
    row_start, degree, neighbours, log_factors = graph
    log_factors = log_factors.to(scores.dtype)
    remaining = int(active.sum())
    # About one in-band neighbour per band box: larger bands select a smaller share of their boxes.
    band_size = max(_MIN_BAND, 2 * remaining * remaining // max(1, neighbours.shape[0] + remaining))
    picked_indices, picked_scores = [], []
    while remaining > 0:
        band = active
        if remaining > band_size:
            cutoff = scores[active].topk(band_size, sorted=False).values.min()
            band = active & (scores >= cutoff)
        nodes = band.nonzero().squeeze(1)
        # The adjacency rows of the band, concatenated: row k holds the edges of nodes[k].
        counts = degree.index_select(0, nodes)
        row_ends = counts.cumsum(0)
        size = int(row_ends[-1])
        position = torch.arange(size, device=nodes.device)
        position += (row_start.index_select(0, nodes) - row_ends + counts).repeat_interleave(counts, output_size=size)
        owner = nodes.repeat_interleave(counts, output_size=size)
        other = neighbours.index_select(0, position)
        mine, theirs = scores.index_select(0, owner), scores.index_select(0, other)
        alive = active.index_select(0, other)
        beaten = alive & ((theirs > mine) | ((theirs == mine) & (other < owner)))
        beaten_so_far = torch.cat((beaten.new_zeros(1, dtype=torch.int64), beaten.cumsum(0)))
        free = beaten_so_far.index_select(0, row_ends) == beaten_so_far.index_select(0, row_ends - counts)
        chosen = nodes[free]
        picked_indices.append(chosen)
        picked_scores.append(scores.index_select(0, chosen))

        hit = free.repeat_interleave(counts, output_size=size) & alive
        total = torch.zeros_like(scores).index_add_(
            0, other, torch.where(hit, log_factors.index_select(0, position), 0.0)
        )
        scores.mul_(total.exp_())
        active[chosen] = False
        active &= scores >= score_threshold
        if chosen.shape[0] * (2 * remaining + _STEP_COST) < size:
            break
        remaining = int(active.sum())
    return picked_indices, picked_scores


def _decay_sequential(
    boxes: Tensor, scores: Tensor, indices: Tensor, idxs: Tensor | None, decay: _Decay, score_threshold: float
) -> tuple[list[Tensor], list[Tensor]]:
    """The algorithm of the Soft-NMS paper, one selected box per step with O(N) vector work:
    take the best box, decay the others by their overlap with it, drop those that fall below
    the threshold.

    Dropped and selected boxes are marked ``-inf`` and compacted away from time to time (not
    at every step: that would add a pass over every array); the arrays stay in index order, so
    ``argmax`` breaks ties by the lower index.
    """
    picked_indices, picked_scores = [], []
    step = 0
    while scores.shape[0] > 0:
        best = int(scores.argmax())
        best_score = scores[best : best + 1]
        if not bool(best_score >= score_threshold):
            break
        picked_indices.append(indices[best : best + 1])
        picked_scores.append(best_score.clone())
        factor = decay.factor(decay.measure(boxes[best], boxes))
        if idxs is not None:
            factor = torch.where(idxs == idxs[best], factor, 1.0)
        # Dropped boxes are -inf, and -inf * 0 is NaN: the comparison sends both back to -inf.
        decayed = scores * factor
        scores = torch.where(decayed >= score_threshold, decayed, -math.inf)
        scores[best] = -math.inf
        step += 1
        if step % 32 == 0:
            alive = (scores > -math.inf).nonzero().squeeze(1)
            if 2 * alive.shape[0] <= scores.shape[0]:
                boxes, scores, indices = boxes[alive], scores[alive], indices[alive]
                idxs = idxs[alive] if idxs is not None else None
    return picked_indices, picked_scores


def _decay_select(
    boxes: Tensor, scores: Tensor, idxs: Tensor | None, decay: _Decay, score_threshold: float
) -> tuple[Tensor, Tensor]:
    """Soft-NMS with any decay: repeatedly select the best box and decay the scores of the
    boxes of its class by their overlap with it; drop boxes below ``score_threshold``.

    Returns the selected indices and their scores at selection, by decreasing score and
    increasing index. Rounds of local maxima (:func:`_decay_rounds`) do most of the work when
    the overlap graph is sparse enough; the sequential algorithm finishes what they leave.
    """
    scores = scores.clone()
    active = scores >= score_threshold
    picked_indices: list[Tensor] = []
    picked_scores: list[Tensor] = []
    # A negative threshold lets disjoint boxes interact, which the graph of intersecting pairs misses.
    graph = None
    if decay.min_overlap >= 0:
        graph = _overlap_graph(boxes, active.nonzero().squeeze(1), idxs, decay)
    if graph is not None:
        picked_indices, picked_scores = _decay_rounds(scores, active, graph, score_threshold)
    rest = active.nonzero().squeeze(1)
    rest_idxs = idxs[rest] if idxs is not None else None
    tail_indices, tail_scores = _decay_sequential(boxes[rest], scores[rest], rest, rest_idxs, decay, score_threshold)
    indices = torch.cat([*picked_indices, *tail_indices, _empty_indices(boxes)])
    selected_scores = torch.cat([*picked_scores, *tail_scores, scores.new_empty(0)])
    by_index = indices.argsort()
    indices, selected_scores = indices[by_index], selected_scores[by_index]
    by_score = selected_scores.argsort(descending=True, stable=True)
    return indices[by_score], selected_scores[by_score]


def _diou_nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> Tensor:
    _check_finite(boxes, scores)
    # Greedy NMS is Soft-NMS whose decay drops suppressed boxes to zero, run on the rank of each
    # score (n for the best down to 1) so that ties go by index, and suppressed boxes (0) fall below 0.5.
    order = scores.argsort(descending=True, stable=True)
    ranks = torch.arange(order.shape[0], 0, -1, dtype=torch.float64, device=scores.device)
    priority = torch.empty_like(ranks).index_copy_(0, order, ranks)
    decay = _Decay("hard", "diou", iou_threshold)
    return _decay_select(boxes, priority, idxs, decay, score_threshold=0.5)[0]


@export("ops.diou_nms")
def diou_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS that suppresses by distance IoU (Zheng et al., AAAI 2020).

    A box is dropped when its DIoU with a kept box, ``IoU - ρ²(centres) / c²`` (``c`` the
    diagonal of the enclosing box), exceeds ``iou_threshold``. Two overlapping boxes whose
    centres lie far apart (e.g. neighbouring objects) are kept where plain NMS drops one.

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``.
        iou_threshold: boxes with DIoU ``> iou_threshold`` with a kept box are dropped. DIoU is
            in [-1, 1]; a negative threshold also lets disjoint boxes suppress each other (and
            is computed one kept box at a time).

    Returns:
        ``[K]`` int64 indices of the kept boxes, by decreasing score (ties by increasing index).
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    return _diou_nms(boxes, scores, None, iou_threshold)


@export("ops.batched_diou_nms")
def batched_diou_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """:func:`diou_nms` within each class: boxes of different ``idxs`` never suppress each other.

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``.
        idxs: ``[N]`` integer class of each box.
        iou_threshold: boxes with DIoU ``> iou_threshold`` with a kept box of their class are dropped.

    Returns:
        ``[K]`` int64 indices of the kept boxes, by decreasing score (ties by increasing index).
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    idxs = _check_idxs(idxs, boxes)
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    return _diou_nms(boxes, scores, idxs, iou_threshold)


def _soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor | None,
    sigma: float,
    score_threshold: float,
    method: str,
    iou_threshold: float,
) -> tuple[Tensor, Tensor]:
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    sigma = _check_threshold(sigma, "sigma")
    if not 0 < sigma < math.inf:
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    score_threshold = _check_threshold(score_threshold, "score_threshold")
    if not math.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be finite, got {score_threshold}")
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    _check_finite(boxes, scores)
    if not bool((scores >= 0).all()):
        raise ValueError("scores must be non-negative for soft_nms (the decay multiplies them), got negative scores")
    decay = _Decay(method, "iou", iou_threshold, sigma)
    return _decay_select(boxes, scores, idxs, decay, score_threshold)


@export("ops.soft_nms")
def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
    *,
    iou_threshold: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., ICCV 2017): instead of dropping the boxes that overlap a
    selected box, lower their scores, and keep every box whose score stays above a threshold.

    Repeatedly selects the box with the highest current score and multiplies the score of
    each remaining box ``b`` by ``f(IoU(M, b))``:

    - ``"gaussian"``: ``f = exp(-IoU² / sigma)``;
    - ``"linear"``: ``f = 1 - IoU`` when ``IoU > iou_threshold``, else 1.

    Boxes whose score falls below ``score_threshold`` are dropped.

    The result equals that sequential algorithm (up to the float rounding of products of
    decays), but most boxes are selected in batches: a box with the highest score among the
    boxes it overlaps cannot be overtaken by them, so all such boxes are taken at once. Memory
    is ``O(N + P)`` for ``P`` decaying pairs. The batches are large when each box overlaps a
    few dozen others or fewer (``benchmarks/soft_nms.py``: 5x to 40x faster than the
    sequential loop in NumPy on 5,000 random boxes); in dense clusters they shrink to one box,
    and with more than about a million decaying pairs the sequential algorithm runs instead,
    with ``O(N)`` memory, at a few times the per-step cost of NumPy.

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``, finite and non-negative.
        sigma: width of the gaussian decay (positive); unused by ``"linear"``.
        score_threshold: boxes whose rescored score is ``< score_threshold`` are dropped.
        method: ``"gaussian"`` or ``"linear"``.
        iou_threshold: the linear decay applies to ``IoU > iou_threshold``, in [0, 1];
            unused by ``"gaussian"``.

    Returns:
        ``(indices, rescored)``: ``[K]`` int64 indices of the kept boxes and ``[K]`` their
        rescored scores, in selection order (decreasing rescored score, ties by increasing index).

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
        >>> soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), method="linear")
        (tensor([0, 2, 1]), tensor([0.9000, 0.7000, 0.4000]))
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    return _soft_nms(boxes, scores, None, sigma, score_threshold, method, iou_threshold)


@export("ops.batched_soft_nms")
def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
    *,
    iou_threshold: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """:func:`soft_nms` within each class: boxes of different ``idxs`` never decay each other.

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``, finite and non-negative.
        idxs: ``[N]`` integer class of each box.
        sigma, score_threshold, method, iou_threshold: as in :func:`soft_nms`.

    Returns:
        ``(indices, rescored)`` as in :func:`soft_nms`, all classes together by decreasing rescored score.
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    idxs = _check_idxs(idxs, boxes)
    return _soft_nms(boxes, scores, idxs, sigma, score_threshold, method, iou_threshold)
