"""Distribution metrics: Fréchet distance, kernel distance, precision/recall, Inception Score, accuracy."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldmkit.errors import ConfigError
from ldmkit.evaluation.classifier import classification_accuracy
from ldmkit.evaluation.frechet import frechet_distance, frechet_distance_from_features, mean_and_covariance
from ldmkit.evaluation.inception_score import inception_score
from ldmkit.evaluation.kid import kernel_distance, mmd2_unbiased
from ldmkit.evaluation.precision_recall import knn_radii, precision_recall
from ldmkit.evaluation.random_features import RandomConvFeatures


def _reference_fd(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root (float64)."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_fd_matches_float64_reference_on_random_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    y = rng.normal(loc=0.3, size=(250, 12)) @ rng.normal(size=(12, 12))
    ours = frechet_distance_from_features(x, y)
    assert ours == pytest.approx(_reference_fd(x, y), rel=1e-9)
    # Hand-checkable case: diagonal covariances give Σ (μ1−μ2)² + (σ1 − σ2)².
    fd = frechet_distance(np.zeros(3), np.diag([1.0, 4.0, 9.0]), np.ones(3), np.diag([4.0, 4.0, 1.0]))
    assert fd == pytest.approx(3 + 1 + 0 + 4)


def test_fd_of_rank_deficient_covariances_is_finite_and_symmetric():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 20))  # 5 samples in 20 dimensions: singular covariance
    y = rng.normal(size=(6, 20))
    a, b = frechet_distance_from_features(x, y), frechet_distance_from_features(y, x)
    assert np.isfinite(a) and a > 0
    assert a == pytest.approx(b, rel=1e-8)


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)  # [N, 3, 32, 32]


def test_fd_is_zero_against_itself_and_grows_with_noise_and_blur():
    extractor = RandomConvFeatures()
    images = _smooth_images(96, seed=0)
    reference = extractor(images)
    assert frechet_distance_from_features(reference, reference) == pytest.approx(0, abs=1e-8)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(images.shape, generator=g)
    by_noise = [frechet_distance_from_features(reference, extractor((images + s * noise).clamp(-1, 1)))
                for s in (0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in itertools.pairwise(by_noise)), by_noise
    kernel = torch.ones(3, 1, 3, 3) / 9
    blurred, by_blur = images, []
    for _ in range(3):
        blurred = F.conv2d(F.pad(blurred, [1, 1, 1, 1], mode="replicate"), kernel, groups=3)
        by_blur.append(frechet_distance_from_features(reference, extractor(blurred)))
    assert 0 < by_blur[0] < by_blur[1] < by_blur[2], by_blur


def test_mean_and_covariance_are_float64():
    mu, sigma = mean_and_covariance(torch.randn(10, 4))
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    draws = [mmd2_unbiased(torch.from_numpy(rng.normal(size=(20, 8))), torch.from_numpy(rng.normal(size=(20, 8))))
             for _ in range(300)]
    mean, sem = np.mean(draws), np.std(draws) / np.sqrt(len(draws))
    assert abs(mean) < 3 * sem + 1e-12, (mean, sem)
    assert min(draws) < 0  # the unbiased estimator goes below zero, a biased one would not
    shifted, std = kernel_distance(rng.normal(size=(200, 8)), rng.normal(loc=0.5, size=(200, 8)), subsets=20,
                                   subset_size=50)
    assert shifted > 3 * std > 0


def test_mmd2_matches_the_definition():
    rng = np.random.default_rng(2)
    x, y = torch.from_numpy(rng.normal(size=(5, 3))), torch.from_numpy(rng.normal(size=(4, 3)))

    def k(a, b):
        return (float(a @ b) / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_subsets_are_seeded_and_capped():
    x, y = np.random.default_rng(0).normal(size=(2, 30, 5))
    assert kernel_distance(x, y, subsets=5, subset_size=1000, seed=3) == kernel_distance(x, y, subsets=5, seed=3)
    with pytest.raises(ConfigError):
        kernel_distance(x[:1], y, subsets=2)


def test_precision_recall_on_toy_gaussians():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=g)
    same = torch.randn(400, 4, generator=g)
    far = torch.randn(400, 4, generator=g) + 50
    assert precision_recall(real, far) == (0.0, 0.0)
    p, r = precision_recall(real, same, block=64)
    assert p > 0.9 and r > 0.9
    assert precision_recall(real, real) == (1.0, 1.0)
    # A generator covering only half of the real distribution: precise, but poor recall.
    half = same[same[:, 0] > 0]
    p, r = precision_recall(real, half)
    assert p > 0.9 and r < 0.75


def test_knn_radii_exclude_the_point_itself():
    points = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(points, k=1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(points, k=3).tolist() == [6.0, 5.0, 3.0, 6.0]


def test_inception_score_bounds():
    assert inception_score(torch.zeros(20, 7), splits=2)[0] == pytest.approx(1.0)  # no information
    confident = torch.eye(10).repeat(2, 1) * 100  # every class, each with certainty
    mean, std = inception_score(confident, splits=2)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0, abs=1e-6)


def test_classification_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert classification_accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    with pytest.raises(ConfigError, match="classes"):
        classification_accuracy(logits, torch.tensor([0, 1, 2, 1]))
