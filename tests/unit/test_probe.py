"""The linear probe: it learns what is linearly there, and nothing that is not."""

import pytest
import torch

from ldmkit.evaluation import LinearProbe


def blobs(n: int, classes: int, dim: int = 16, spread: float = 0.3, seed: int = 0):
    """``classes`` Gaussian clusters around random unit centres: [n, dim] features, [n] labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)),
                                            dim=1)
    labels = torch.arange(n) % classes
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def test_separable_classes_are_told_apart_on_held_out_points():
    train, held_out = blobs(400, 5), blobs(200, 5, seed=1)
    probe = LinearProbe(*train)
    assert probe.classes == 5
    assert probe.accuracy(*held_out) > 0.97


def test_labels_unrelated_to_the_features_stay_at_chance_on_held_out_points():
    features, _ = blobs(400, 4)
    shuffled = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(3))
    probe = LinearProbe(features[:300], shuffled[:300])
    assert probe.accuracy(features[300:], shuffled[300:]) < 0.45  # chance 0.25; 100 points


def test_feature_scale_does_not_matter_and_probabilities_are_distributions():
    train, held_out = blobs(300, 3), blobs(90, 3, seed=2)
    plain = LinearProbe(*train)
    scaled = LinearProbe(train[0] * 1000 + 5, train[1])  # standardisation removes scale and offset
    assert torch.equal(plain.predict(held_out[0]), scaled.predict(held_out[0] * 1000 + 5))
    p = plain.probabilities(held_out[0])
    assert p.shape == (90, 3) and torch.allclose(p.sum(1), torch.ones(90)) and (p >= 0).all()
    # the binary case reads as the probability of class 1
    two = LinearProbe(*blobs(200, 2))
    assert two.probabilities(blobs(20, 2, seed=4)[0]).shape == (20, 2)


def test_bad_shapes_and_labels_are_refused():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        LinearProbe(torch.randn(10), torch.zeros(10))
    with pytest.raises(ValueError, match="labels must lie"):
        LinearProbe(torch.randn(10, 3), torch.full((10,), 4), classes=3)
