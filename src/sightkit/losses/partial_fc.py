"""Partial FC: the margin-softmax classifier with its class centres sharded over the DDP ranks.

An, Deng et al., "Killing Two Birds With One Stone: Efficient and Robust Training of Face
Recognition CNNs by Partial FC", CVPR 2022. With millions of identities the ``[C, D]``
matrix of class centres and the ``[B, C]`` logits do not fit one device. Each of the ``W``
ranks keeps ``C / W`` centres; the embeddings of the whole global batch are gathered on every
rank; each rank scores them against (a sample of) its own centres; and the softmax
cross-entropy is computed across ranks with two all-reduces of ``[B]`` vectors (the row
maxima and the sums of exponentials) plus one for the target logits, never gathering the
logits themselves.

With ``sample_rate < 1`` each rank scores only that fraction of its centres per step: the
batch's positive classes always, the rest drawn at random. With ``sample_rate = 1`` the loss
and every gradient equal those of the full classifier on one process.

The module's ``weight`` (this rank's centres) must stay out of DDP's gradient averaging,
since every rank holds different rows: a model that owns a :class:`PartialFC` marks it with
:func:`exclude_from_ddp`. DDP averages the *backbone's* gradients over the ranks while the
loss here is already the mean over the global batch on every rank, so the gradient that
reaches this rank's embeddings is multiplied by ``W`` (as insightface does) and the average
is the exact gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sightkit._api import export
from sightkit.losses.focal import check_real
from sightkit.losses.margin import check_margins, combined_margin_logits

# Rows per block of the initial centres (init_centres).
_INIT_BLOCK = 4096


def init_centres(
    num_classes: int, dim: int, start: int, count: int, generator: torch.Generator | None = None
) -> Tensor:
    """Rows ``start`` to ``start + count - 1`` of the ``[num_classes, dim]`` initial class centres,
    ``N(0, 0.01)`` as in insightface, the same values however the classes are sharded.

    The whole matrix is drawn from ``generator`` (None: the global RNG) in blocks of 4,096
    rows in class order; a rank draws and drops the blocks before its own, so it never holds
    more than its shard and one block, and 1 or W processes start from the same centres.
    """
    centres = torch.empty(count, dim)
    for first in range(0, start + count, _INIT_BLOCK):
        block = torch.empty(min(_INIT_BLOCK, num_classes - first), dim).normal_(0, 0.01, generator=generator)
        low, high = max(first, start), min(first + block.shape[0], start + count)
        if low < high:
            centres[low - start : high - start] = block[low - first : high - first]
    return centres


def _group_info(group: Any) -> tuple[int, int]:
    """``(rank, world size)`` in ``group``; ``(0, 1)`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(first class, number of classes)`` of ``rank``: consecutive blocks, the first
    ``num_classes % world_size`` ranks holding one class more."""
    base, extra = divmod(num_classes, world_size)
    return rank * base + min(rank, extra), base + (rank < extra)


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's ``[B, ...]`` tensor; the backward sums the gradients of all ranks
    and returns this rank's rows, times the world size (for DDP's averaging, module docstring)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        rank, world = _group_info(group)
        ctx.rank, ctx.world, ctx.rows, ctx.group = rank, world, tensor.shape[0], group
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows) * ctx.world, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Per-sample softmax cross-entropy over logits whose columns are split across ranks.

    ``logits`` ``[B, S]`` are this rank's columns; ``labels`` ``[B]`` the target's column
    here, or -1 when the target lives on another rank. Forward: global row maximum (MAX
    all-reduce), global sum of ``exp(logit - max)`` and the target logit (SUM all-reduces);
    loss ``log(sum) + max - target``. Backward: ``softmax - one_hot`` on this rank's columns,
    which needs no communication.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, labels: Tensor, group: Any, distributed: bool) -> Tensor:
        maximum = logits.max(dim=1).values if logits.shape[1] else logits.new_full(logits.shape[:1], -math.inf)
        if distributed:
            dist.all_reduce(maximum, op=dist.ReduceOp.MAX, group=group)
        exp = (logits - maximum[:, None]).exp_()
        total = exp.sum(dim=1)
        rows = torch.nonzero(labels >= 0).squeeze(1)
        target = logits.new_zeros(logits.shape[0])
        target[rows] = logits[rows, labels[rows]] - maximum[rows]
        if distributed:
            # One all-reduce for both [B] vectors.
            both = torch.stack([total, target])
            dist.all_reduce(both, op=dist.ReduceOp.SUM, group=group)
            total, target = both[0], both[1]
        exp.div_(total[:, None])
        ctx.save_for_backward(exp, labels)
        return total.log() - target

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        softmax, labels = ctx.saved_tensors
        rows = torch.nonzero(labels >= 0).squeeze(1)
        # A new tensor: the saved softmax stays intact for a second backward (retain_graph, gradcheck).
        grad_logits = softmax * grad[:, None]
        grad_logits[rows, labels[rows]] -= grad[rows]
        return grad_logits, None, None, None


@export("losses.PartialFC")
class PartialFC(nn.Module):
    """The margin-softmax classifier of face recognition with class centres sharded over ranks
    (Partial FC, An et al. CVPR 2022; module docstring).

    ``forward(embeddings [B, D], labels [B])`` takes this rank's batch and returns the mean
    combined-margin loss (:func:`~sightkit.losses.combined_margin_logits`) over the global
    batch, the same scalar on every rank. Every rank must pass the same ``B``.

    Args:
        embedding_size: ``D``.
        num_classes: ``C``, all ranks together (at least the world size).
        sample_rate: fraction of this rank's centres scored per training step, in (0, 1];
            the batch's classes are always among them. In eval mode every centre is scored.
        scale, m1, m2, m3: see :func:`~sightkit.losses.combined_margin_logits` (ArcFace's
            ``s = 64, m2 = 0.5`` by default).
        group: the process group (``None``: the default group, or one process without one).
        generator: the RNG of the centres' initialisation (:func:`init_centres`) and of the
            sampling; None: the global RNG, which the trainer checkpoints per rank, so that a
            resumed run samples the same centres as one that never stopped.

    Attributes:
        weight: ``[num_local, D]`` this rank's centres, classes ``class_start`` to
            ``class_start + num_local - 1``.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        scale: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        group: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("embedding_size", embedding_size), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.sample_rate = check_real(sample_rate, "sample_rate", minimum=0.0, maximum=1.0)
        if self.sample_rate == 0:
            raise ValueError("sample_rate must be in (0, 1], got 0")
        self.scale, self.m1, self.m2, self.m3 = check_margins(scale, m1, m2, m3)
        self.group = group
        self.generator = generator
        self.rank, self.world_size = _group_info(group)
        if num_classes < self.world_size:
            raise ValueError(f"num_classes={num_classes} must be at least the world size {self.world_size}")
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.class_start, self.num_local = shard_range(num_classes, self.rank, self.world_size)
        self.weight = nn.Parameter(
            init_centres(num_classes, embedding_size, self.class_start, self.num_local, generator)
        )

    def _check(self, embeddings: Tensor, labels: Tensor) -> None:
        if not isinstance(embeddings, Tensor) or not embeddings.is_floating_point() or embeddings.dim() != 2:
            got = f"shape {tuple(embeddings.shape)}" if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise TypeError(f"embeddings must be a floating-point tensor [B, D], got {got}")
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must have D = {self.embedding_size} columns, got {embeddings.shape[1]}")
        if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            got = f"dtype {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
            raise TypeError(f"labels must be an integer tensor [B] of class indices, got {got}")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels must have shape [B] = [{embeddings.shape[0]}], got {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must be class indices in [0, {self.num_classes}), got values in "
                f"[{labels.min().item()}, {labels.max().item()}]"
            )

    def _gather(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The global batch: every rank's embeddings (differentiable) and labels, in rank order."""
        sizes = [torch.zeros(1, dtype=torch.long, device=labels.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([labels.shape[0]], device=labels.device), group=self.group)
        counts = [int(s) for s in sizes]
        if len(set(counts)) != 1:
            raise ValueError(f"PartialFC needs the same batch size on every rank, got {counts} (rank order)")
        parts = [torch.empty_like(labels) for _ in range(self.world_size)]
        dist.all_gather(parts, labels.contiguous(), group=self.group)
        return _AllGather.apply(embeddings, self.group), torch.cat(parts)

    def sample(self, local_labels: Tensor) -> Tensor:
        """The sorted indices of this rank's centres to score: every positive class of the batch
        (``local_labels >= 0``) and random others, ``ceil(sample_rate * num_local)`` in all (or
        just the positives when they are more)."""
        count = math.ceil(self.sample_rate * self.num_local)
        positives = torch.unique(local_labels[local_labels >= 0])
        if count >= self.num_local:
            return torch.arange(self.num_local, device=local_labels.device)
        if positives.numel() >= count:
            return positives
        priority = torch.rand(self.num_local, generator=self.generator).to(local_labels.device)
        priority[positives] = 2.0  # above every random draw: positives are always kept
        return torch.topk(priority, count, sorted=False).indices.sort().values

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean margin-softmax loss of the global batch (a scalar, the same on every rank)."""
        self._check(embeddings, labels)
        distributed = self.world_size > 1
        if distributed:
            embeddings, labels = self._gather(embeddings, labels)
        labels = labels.long()
        local = labels - self.class_start
        local = torch.where((local >= 0) & (local < self.num_local), local, torch.full_like(local, -1))
        weight = self.weight
        if self.training and self.sample_rate < 1:
            index = self.sample(local)
            weight = weight[index]
            # Position of each positive class among the sampled centres (all positives are sampled).
            local = torch.where(local >= 0, torch.searchsorted(index, local.clamp(min=0)), local)
        # float32 at least (float64 stays float64): half-precision cosines would round the margins away.
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, weight.dtype), torch.float32)
        cosine = F.linear(F.normalize(embeddings.to(dtype)), F.normalize(weight.to(dtype)))
        logits = combined_margin_logits(cosine, local, self.scale, self.m1, self.m2, self.m3)
        loss = _ShardedCrossEntropy.apply(logits, local, self.group, distributed)
        return loss.sum() if loss.numel() == 0 else loss.mean()

    def reshard(self, parts: Sequence[Tensor]) -> Tensor:
        """This rank's rows of a per-class tensor (the centres or their optimiser state) saved
        as shards, in rank order, by any number of processes: how a checkpoint resumes on
        another number of processes (``sightkit.engine.rank_local``).

        Raises:
            ValueError: the shards do not add up to ``num_classes`` rows.
        """
        whole = torch.cat(list(parts))
        if whole.shape[0] != self.num_classes:
            raise ValueError(
                f"the saved shards hold {whole.shape[0]} class rows in all, but this PartialFC has "
                f"num_classes={self.num_classes}; resume with the data (identities) of the run that wrote them"
            )
        return whole[self.class_start : self.class_start + self.num_local].clone()

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, classes here "
            f"[{self.class_start}, {self.class_start + self.num_local}), sample_rate={self.sample_rate}, "
            f"scale={self.scale}, m1={self.m1}, m2={self.m2}, m3={self.m3}"
        )


@export("losses.exclude_from_ddp")
def exclude_from_ddp(model: nn.Module) -> nn.Module:
    """Keep the centres of every :class:`PartialFC` inside ``model`` out of DistributedDataParallel's
    parameter broadcast and gradient averaging (each rank holds different centres). Call it
    before wrapping ``model`` in DDP; returns ``model``."""
    names = [
        f"{prefix}.weight" if prefix else "weight"
        for prefix, module in model.named_modules()
        if isinstance(module, PartialFC)
    ]
    existing = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, existing + names)
    return model
