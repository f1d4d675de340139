"""Partial FC: equal to the full margin softmax on one process and on two gloo processes
(loss and gradients), positives always sampled, class shards, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gloo_launch import launch
from partial_fc_data import MARGINS, NUM_CLASSES, Recognizer, make_problem

from sightkit.losses import PartialFC, combined_margin_loss, exclude_from_ddp
from sightkit.losses.partial_fc import shard_range

WORKER = Path(__file__).with_name("partial_fc_worker.py")


def _full_reference() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Loss and gradients of the full classifier on one process, written out directly."""
    inputs, labels, backbone, centres = make_problem()
    centres.requires_grad_()
    cosine = F.normalize(backbone(inputs)) @ F.normalize(centres).T
    loss = combined_margin_loss(cosine, labels, **MARGINS)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in backbone.named_parameters()}, centres.grad


def test_one_process_equals_the_full_margin_softmax() -> None:
    inputs, labels, backbone, centres = make_problem()
    head = PartialFC(4, NUM_CLASSES, **MARGINS)
    assert (head.class_start, head.num_local) == (0, NUM_CLASSES)
    with torch.no_grad():
        head.weight.copy_(centres)
    loss = Recognizer(backbone, head)(inputs, labels)
    loss.backward()
    expected_loss, expected_grads, expected_centres = _full_reference()
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(head.weight.grad, expected_centres)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(backbone.get_parameter(name).grad, grad)


def test_gradcheck_of_the_sharded_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    embeddings = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    head = PartialFC(3, 4, scale=3.0, m2=0.4).double()
    labels = torch.tensor([0, 3, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda e, w: _with_weight(head, w)(e, labels), (embeddings, head.weight))


def _with_weight(head: PartialFC, weight: torch.Tensor):
    def call(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(head, {"weight": weight}, (embeddings, labels))

    return call


def test_sampling_keeps_every_positive_and_scores_only_the_sample() -> None:
    g = torch.Generator().manual_seed(0)
    head = PartialFC(4, 100, sample_rate=0.1, scale=8.0, generator=g)
    labels = torch.tensor([3, 97, 3, 50, 11, 64, 20, 88, 41, 7, 12, 13])  # 11 classes > 10 sampled: all positives
    index = head.sample(labels)
    assert torch.equal(index, torch.unique(labels))
    few = torch.tensor([3, 97, 50])
    index = head.sample(few)
    assert index.numel() == 10 and set(few.tolist()) <= set(index.tolist())
    assert torch.equal(index, index.sort().values) and index.unique().numel() == 10
    # The training loss is the full loss restricted to the sampled centres (same draw: same seed).
    embeddings = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    head.generator = torch.Generator().manual_seed(9)
    loss = head(embeddings, few)
    head.generator = torch.Generator().manual_seed(9)
    index = head.sample(few)
    cosine = F.normalize(embeddings) @ F.normalize(head.weight[index]).T
    expected = combined_margin_loss(cosine, torch.searchsorted(index, few), scale=8.0)
    torch.testing.assert_close(loss, expected)
    head.eval()  # every centre at evaluation
    full = combined_margin_loss(F.normalize(embeddings) @ F.normalize(head.weight).T, few, scale=8.0)
    torch.testing.assert_close(head(embeddings, few), full)


def test_only_sampled_centres_get_gradients() -> None:
    head = PartialFC(4, 50, sample_rate=0.2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2, 30])
    head(torch.randn(3, 4), labels).backward()
    touched = head.weight.grad.abs().sum(1) > 0
    assert touched.sum() == 10 and touched[labels].all()


@pytest.mark.parametrize(
    ("classes", "world", "expected"), [(11, 2, [(0, 6), (6, 5)]), (9, 3, [(0, 3), (3, 3), (6, 3)])]
)
def test_shards_cover_the_classes_once(classes: int, world: int, expected: list) -> None:
    assert [shard_range(classes, r, world) for r in range(world)] == expected


def test_exclude_from_ddp_names_the_centres() -> None:
    model = exclude_from_ddp(Recognizer(torch.nn.Linear(2, 2), PartialFC(2, 3)))
    assert model._ddp_params_and_buffers_to_ignore == ["head.weight"]
    assert getattr(model.head.weight, "_ddp_ignored", False)


def test_bad_inputs_are_errors() -> None:
    head = PartialFC(4, 10)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\), got values in \[0, 10\]"):
        head(torch.randn(2, 4), torch.tensor([0, 10]))
    with pytest.raises(TypeError, match=r"labels must be an integer tensor \[B\].*float32"):
        head(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="embeddings must have D = 4 columns, got 3"):
        head(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"sample_rate must be in \[0.0, 1.0\], got 1.5"):
        PartialFC(4, 10, sample_rate=1.5)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        PartialFC(4, 0)


@pytest.mark.slow
def test_two_gloo_processes_equal_the_full_softmax_on_one(tmp_path: Path) -> None:
    world = 2
    launch(WORKER, tmp_path, world=world)
    views = torch.load(tmp_path / "ranks.pt", weights_only=True)
    expected_loss, expected_grads, expected_centres = _full_reference()
    pieces = []
    for rank, view in enumerate(views):
        start, count = shard_range(NUM_CLASSES, rank, world)
        assert view["class_start"] == start
        torch.testing.assert_close(view["loss"], expected_loss)  # the global mean on every rank
        for name, grad in expected_grads.items():  # after DDP's averaging: the full gradient
            torch.testing.assert_close(view["backbone_grads"][name], grad)
        pieces.append(view["head_grad"])
        assert view["head_grad"].shape[0] == count
    torch.testing.assert_close(torch.cat(pieces), expected_centres)
