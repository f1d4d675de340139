"""Face templates: hand-computed pooling, fall-backs, best-of-images equal to the identification
metric's rule, and templates beating single images when enrolment images are noisy."""

import math

import pytest
import torch
import torch.nn.functional as F

from sightkit.eval import FaceQuality, identification_accuracy, identity_scores, pool_templates, quality_weights


def test_pooling_by_hand() -> None:
    embeddings = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, -1.0]])  # normalised before pooling
    templates, identities = pool_templates(embeddings, ["ann", "ann", "bob"], torch.tensor([3.0, 1.0, 0.5]))
    assert identities == ["ann", "bob"]
    assert torch.allclose(templates[0], torch.tensor([3.0, 1.0]) / math.sqrt(10))
    assert torch.allclose(templates[1], torch.tensor([0.0, -1.0]))
    # A zero weight leaves an image out; all zeros for one person fall back to the plain mean.
    zero = pool_templates(embeddings, torch.tensor([7, 7, 3]), torch.tensor([0.0, 1.0, 0.0]))
    assert zero[1] == [3, 7]
    assert torch.allclose(zero[0], torch.tensor([[0.0, -1.0], [0.0, 1.0]]))
    plain = pool_templates(embeddings, ["a", "a", "b"], torch.zeros(3))[0]
    assert torch.allclose(plain[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))


def test_best_mode_is_the_identification_rule() -> None:
    generator = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(12, 8, generator=generator), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    probes = F.normalize(torch.randn(5, 8, generator=generator), dim=1)
    scores, identities = identity_scores(probes, gallery, labels, mode="best")
    expected = torch.stack([(probes @ gallery[labels == k].T).amax(1) for k in identities], 1)
    assert torch.allclose(scores, expected)
    # Rank 1 from these scores is what identification_accuracy counts.
    truth = scores.argmax(1)
    assert identification_accuracy(probes @ gallery.T, truth, labels, ranks=(1,))[1] == 1.0


def test_templates_identify_better_than_single_images_when_enrolment_is_noisy() -> None:
    """Each person: a true direction; enrolment images and probes are it plus strong noise. The
    template averages the noise away; the best of noisy images matches strangers more often."""
    generator = torch.Generator().manual_seed(1)
    people, per, dim = 40, 5, 32
    centres = F.normalize(torch.randn(people, dim, generator=generator), dim=1)
    labels = torch.arange(people).repeat_interleave(per)
    gallery = centres[labels] + 0.35 * torch.randn(people * per, dim, generator=generator)
    probes = centres + 0.35 * torch.randn(people, dim, generator=generator)
    accuracy = {}
    for mode in ("template", "best"):
        scores, identities = identity_scores(probes, gallery, labels, mode=mode)
        accuracy[mode] = float((torch.tensor(identities)[scores.argmax(1)] == torch.arange(people)).float().mean())
    assert accuracy["template"] > accuracy["best"] + 0.05


def test_quality_weights_by_hand() -> None:
    quality = FaceQuality(
        size=torch.tensor([24.0, 1e9, 1e9]),
        yaw=torch.tensor([0.0, math.pi / 3, math.nan]),
        pitch=torch.zeros(3),
        roll=torch.zeros(3),
        sharpness=torch.tensor([1e9, 1e9, 100.0]),
        score=torch.full((3,), math.nan),
    )
    weights = quality_weights(quality, min_size=24.0, sharpness_scale=100.0)
    assert weights.tolist() == pytest.approx([0.5, 0.25, 0.5], rel=1e-6)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="one identity per embedding"):
        pool_templates(torch.ones(3, 2), ["a", "b"])
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        pool_templates(torch.ones(2, 2), ["a", "b"], torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="mode must be one of"):
        identity_scores(torch.ones(1, 2), torch.ones(2, 2), ["a", "b"], mode="mean")
    with pytest.raises(ValueError, match="queries have 3 dimensions"):
        identity_scores(torch.ones(1, 3), torch.ones(2, 2), ["a", "b"])
