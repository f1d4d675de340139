"""Contrastive denoising queries: the attention mask (on the mask, and by perturbing the model's
inputs), the noise ranges of positives and negatives, labels, padding and empty batches."""

import pytest
import torch

import sightkit.models.dino as dino_module
from sightkit.models import DenoisingQueries, contrastive_denoising, create_model
from sightkit.ops import box_convert

NUM_CLASSES = 10


def two_images() -> list[dict[str, torch.Tensor]]:
    """Image 0 has three targets, image 1 has one; boxes in the middle so that no noise is clipped."""
    return [
        {
            "labels": torch.tensor([1, 4, 7]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.45, 0.55, 0.1, 0.1], [0.5, 0.4, 0.3, 0.2]]),
        },
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.25, 0.25]])},
    ]


def test_mask_hides_denoising_from_matching_queries_and_groups_from_each_other() -> None:
    dn = contrastive_denoising(two_images(), NUM_CLASSES, num_queries=5, num_denoising=7)
    assert (dn.num_groups, dn.group_size) == (2, 6)  # 7 // 3 groups of 3 positives + 3 negatives
    size = dn.num_groups * dn.group_size
    mask = dn.attn_mask
    assert mask.shape == (size + 5, size + 5)
    assert mask[size:, :size].all()  # matching queries never see denoising ones
    assert not mask[:, size:].any()  # everything may see the matching queries
    assert not mask[:size, :size][:6, :6].any() and not mask[:size, :size][6:, 6:].any()  # within a group
    assert mask[:6, 6:12].all() and mask[6:12, :6].all()  # across groups
    assert not mask.diagonal().any()


def test_layout_labels_and_positive_indices() -> None:
    targets = two_images()
    dn = contrastive_denoising(targets, NUM_CLASSES, num_queries=5, num_denoising=7, label_noise_ratio=0.0)
    # Group g holds positives at g*6 + [0, 3) and negatives at g*6 + [3, 6); image 1 pads to 3.
    expected0 = torch.tensor([1, 4, 7, 1, 4, 7] * 2)
    pad = NUM_CLASSES
    expected1 = torch.tensor([2, pad, pad, 2, pad, pad] * 2)
    torch.testing.assert_close(dn.labels, torch.stack([expected0, expected1]))
    (query0, target0), (query1, target1) = dn.positive_indices
    assert query0.tolist() == [0, 1, 2, 6, 7, 8] and target0.tolist() == [0, 1, 2, 0, 1, 2]
    assert query1.tolist() == [0, 6] and target1.tolist() == [0, 0]
    torch.testing.assert_close(dn.boxes[1, [1, 2, 4, 5]], torch.full((4, 4), 0.5))  # padding boxes


def test_positives_move_less_than_half_the_noise_scale_and_negatives_up_to_the_whole() -> None:
    targets = [{"labels": torch.zeros(4, dtype=torch.int64), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.1]] * 4)}]
    scale = 0.8
    dn = contrastive_denoising(targets, 3, num_queries=2, num_denoising=400, box_noise_scale=scale)
    corners = box_convert(dn.boxes[0], "cxcywh", "xyxy").view(dn.num_groups, 2, 4, 4)
    truth = box_convert(targets[0]["boxes"][0], "cxcywh", "xyxy")
    # Each edge moves by a fraction of the box size (x edges of w = 0.2, y edges of h = 0.1).
    relative = (corners - truth).abs() / torch.tensor([0.2, 0.1, 0.2, 0.1])
    positive, negative = relative[:, 0], relative[:, 1]
    assert positive.max() < scale / 2 and negative.min() >= scale / 2 - 1e-6 and negative.max() < scale
    # Spread over the whole range, in both directions.
    assert positive.max() > 0.9 * scale / 2 and negative.max() > 0.9 * scale
    signs = torch.sign(corners - truth)
    assert (signs > 0).any() and (signs < 0).any()


def test_label_noise_flips_about_half_the_ratio() -> None:
    targets = [{"labels": torch.zeros(50, dtype=torch.int64), "boxes": torch.full((50, 4), 0.5)}]
    dn = contrastive_denoising(targets, NUM_CLASSES, num_queries=2, num_denoising=2000, label_noise_ratio=0.6)
    changed = (dn.labels != 0).float().mean().item()
    # P(replaced) = 0.3, and a replacement draws another class with probability 9/10: 0.27.
    assert 0.24 < changed < 0.30
    assert dn.labels.max() < NUM_CLASSES
    assert not (contrastive_denoising(targets, NUM_CLASSES, 2, 100, label_noise_ratio=0.0).labels != 0).any()


def test_a_batch_without_targets_gets_one_group_of_padding() -> None:
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    dn = contrastive_denoising(empty, NUM_CLASSES, num_queries=4, num_denoising=100)
    assert (dn.num_groups, dn.group_size) == (1, 2)
    assert (dn.labels == NUM_CLASSES).all() and dn.attn_mask.shape == (6, 6)
    assert all(len(q) == 0 and len(t) == 0 for q, t in dn.positive_indices)


def test_the_generator_makes_it_reproducible() -> None:
    a = contrastive_denoising(two_images(), NUM_CLASSES, 5, generator=torch.Generator().manual_seed(1))
    b = contrastive_denoising(two_images(), NUM_CLASSES, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.boxes, b.boxes)
    torch.testing.assert_close(a.labels, b.labels)


def test_bad_settings_are_errors() -> None:
    with pytest.raises(ValueError, match="num_classes, num_queries and num_denoising must be >= 1, got 0"):
        contrastive_denoising(two_images(), 0, 5)
    with pytest.raises(ValueError, match=r"label_noise_ratio in \[0, 1\] and box_noise_scale >= 0, got 1.5"):
        contrastive_denoising(two_images(), 3, 5, label_noise_ratio=1.5)
    with pytest.raises(ValueError, match="one dict per image, got an empty list"):
        contrastive_denoising([], 3, 5)


def run_with(model: torch.nn.Module, images: torch.Tensor, dn: DenoisingQueries, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(dino_module, "contrastive_denoising", lambda *args, **kwargs: dn)
    with torch.no_grad():
        return model(images, targets=two_images())


def perturbed(dn: DenoisingQueries, group: int) -> DenoisingQueries:
    """The same queries with group ``group``'s labels and boxes replaced."""
    labels, boxes = dn.labels.clone(), dn.boxes.clone()
    span = slice(group * dn.group_size, (group + 1) * dn.group_size)
    labels[:, span] = (labels[:, span] + 3) % NUM_CLASSES
    boxes[:, span] = torch.rand_like(boxes[:, span]) * 0.5 + 0.25
    return DenoisingQueries(labels, boxes, dn.attn_mask, dn.positive_indices, dn.num_groups, dn.group_size)


def test_perturbing_a_group_changes_only_that_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mask, checked on the outputs: changing denoising group 1 changes neither the
    matching queries' outputs nor group 0's, at any decoder layer; without the mask it would."""
    model = create_model("dino_r18_tiny", num_classes=NUM_CLASSES, num_queries=5, num_denoising=7)
    model.train()  # denoising runs in training; BatchNorm's batch statistics do not depend on the queries
    for head in model.box_heads:  # zero at initialisation: boxes would not depend on the queries' content
        torch.nn.init.normal_(head[-2].weight, std=0.1)
    images = torch.randn(2, 3, 64, 64)
    dn = contrastive_denoising(two_images(), NUM_CLASSES, num_queries=5, num_denoising=7)
    base = run_with(model, images, dn, monkeypatch)
    changed = run_with(model, images, perturbed(dn, 1), monkeypatch)
    group0 = slice(0, dn.group_size)
    group1 = slice(dn.group_size, 2 * dn.group_size)
    for key in ("pred_logits", "pred_boxes"):
        matching = [base[key]] + [a[key] for a in base["aux_outputs"]]
        matching_changed = [changed[key]] + [a[key] for a in changed["aux_outputs"]]
        for a, b in zip(matching, matching_changed, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        for a, b in zip(base["dn_outputs"], changed["dn_outputs"], strict=True):
            torch.testing.assert_close(a[key][:, group0], b[key][:, group0], atol=1e-6, rtol=0)
            assert not torch.allclose(a[key][:, group1], b[key][:, group1], atol=1e-4)
    # The control: without the mask the same perturbation reaches the matching queries.
    open_mask = torch.zeros_like(dn.attn_mask)
    unmasked = DenoisingQueries(dn.labels, dn.boxes, open_mask, dn.positive_indices, dn.num_groups, dn.group_size)
    leaked = run_with(model, images, perturbed(unmasked, 1), monkeypatch)
    reference = run_with(model, images, unmasked, monkeypatch)
    for key in ("pred_logits", "pred_boxes"):
        assert not torch.allclose(reference[key], leaked[key], atol=1e-4)
