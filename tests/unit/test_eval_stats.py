"""Reference statistics, compatibility checks and evaluate_images with a small random feature network."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ldmkit.errors import ConfigError, DataError
from ldmkit.evaluation.evaluate import compute_reference_stats, evaluate_images
from ldmkit.evaluation.extract import extract_features
from ldmkit.evaluation.images import folder_batches, read_image
from ldmkit.evaluation.random_features import RandomConvFeatures
from ldmkit.evaluation.stats import ReferenceStats, StatsMismatchError, check_compatible, load_stats
from ldmkit.io.images import to_pil


def _images(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)  # [N, 3, s, s]


@pytest.fixture(scope="module")
def extractor():
    return RandomConvFeatures()


def test_stats_round_trip_through_npz(tmp_path, extractor):
    stats = compute_reference_stats(_images(12), extractor, source="unit test")
    path = stats.save(tmp_path / "ref.npz")
    back = load_stats(path)
    assert (back.feature, back.protocol, back.dim, back.resolution, back.count) == (
        "random-conv", extractor.protocol, 64, 32, 12)
    assert back.image_size == (16, 16) and back.source == "unit test" and len(back.fingerprint) == 64
    np.testing.assert_array_equal(back.features, stats.features)
    np.testing.assert_allclose(back.mu, back.features.astype(np.float64).mean(0))
    assert back.sigma.dtype == np.float64 and back.sigma.shape == (64, 64)
    slim = compute_reference_stats(_images(12), extractor, keep_features=False).save(tmp_path / "slim.npz")
    assert load_stats(slim).features is None


def test_damaged_or_foreign_stats_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="ldm eval stats"):
        load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", mu=np.zeros(3))
    with pytest.raises(DataError, match="not an ldmkit reference statistics file"):
        load_stats(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError):
        load_stats(tmp_path / "junk.npz")


class _OtherProtocol(RandomConvFeatures):
    protocol = "random-conv seed 0 | resize 64x64 nearest"


def test_mismatches_are_errors_not_numbers(extractor):
    stats = compute_reference_stats(_images(8), extractor)
    check_compatible(stats, extractor, image_size=(16, 16))
    other = _OtherProtocol()
    other.protocol = _OtherProtocol.protocol
    with pytest.raises(StatsMismatchError, match="preprocessing"):
        check_compatible(stats, other)
    renamed = RandomConvFeatures()
    renamed.name = "efflite0"
    with pytest.raises(StatsMismatchError, match="feature network 'random-conv', not 'efflite0'"):
        check_compatible(stats, renamed)
    with pytest.raises(StatsMismatchError, match="samples are 32x32"):
        check_compatible(stats, extractor, image_size=(32, 32))
    check_compatible(stats, extractor, image_size=(32, 32), allow_size_mismatch=True)
    slim = ReferenceStats.from_features(stats.features, extractor, keep_features=False)
    with pytest.raises(StatsMismatchError, match="--no-features"):
        check_compatible(slim, extractor, need_features=True)
    # Through evaluate_images: a reference of another network fails before any network is built.
    with pytest.raises(StatsMismatchError, match="--feature random-conv"):
        evaluate_images(_images(4), stats, feature="inception")


def test_fingerprint_is_order_independent_and_content_sensitive(extractor):
    images = _images(6)
    a = extract_features(extractor, images, batch_size=4).fingerprint
    b = extract_features(extractor, images.flip(0), batch_size=2).fingerprint
    changed = images.clone()
    changed[3, 0, 0, 0] = -changed[3, 0, 0, 0] + 0.5
    assert a == b
    assert extract_features(extractor, changed).fingerprint != a


def test_saved_pngs_score_exactly_like_images_in_memory(tmp_path, extractor):
    images = _images(5, seed=3)
    for i, image in enumerate(images):
        to_pil((image + 1) / 2).save(tmp_path / f"{i}.png")
    from_memory = extract_features(extractor, images, batch_size=2)
    from_files = extract_features(extractor, folder_batches(tmp_path, batch_size=2))
    torch.testing.assert_close(from_files.features, from_memory.features, rtol=0, atol=0)
    assert from_files.fingerprint == from_memory.fingerprint


def test_folder_reading_composites_transparency_over_white(tmp_path):
    Image.new("RGBA", (4, 3), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("L", (4, 3), 0).save(tmp_path / "grey.png")
    assert torch.all(read_image(tmp_path / "clear.png") == 1)
    grey = read_image(tmp_path / "grey.png")
    assert grey.shape == (3, 3, 4) and torch.all(grey == -1)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        folder_batches(tmp_path / "empty")


def test_evaluate_images_against_itself_and_a_different_set(extractor):
    real = _images(40, seed=0)
    stats = compute_reference_stats(real, extractor)
    same = evaluate_images(real, stats, feature=extractor, kid_subsets=10, kid_subset_size=20)
    m = same["metrics"]
    assert m["FD-RandomConv"] == pytest.approx(0, abs=1e-6)
    assert m["Precision-RandomConv"] == 1.0 and m["Recall-RandomConv"] == 1.0
    assert abs(m["KD-RandomConv"]) < 3 * m["KD-RandomConv-std"] + 1e-9
    assert same["num_images"] == 40 and same["images_per_second"] > 0
    assert same["settings"]["feature"] == "random-conv" and same["settings"]["kid_subset_size"] == 20
    other = evaluate_images((real.flip(-1) * 0.3).clamp(-1, 1), stats, feature=extractor,
                            metrics=("fd", "kd"), kid_subsets=10, kid_subset_size=20)["metrics"]
    assert other["FD-RandomConv"] > 1e-3 and other["KD-RandomConv"] > 0
    assert set(other) == {"FD-RandomConv", "KD-RandomConv", "KD-RandomConv-std"}


def test_evaluate_images_accuracy_and_refusals(extractor):
    images = _images(6)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    batches = [{"image": images[:4], "label": labels[:4]}, {"image": images[4:], "label": labels[4:]}]

    def classifier(x):  # predicts class 1 everywhere
        return torch.tensor([[0.0, 1.0]]).repeat(x.shape[0], 1)

    result = evaluate_images(batches, None, feature=extractor, metrics=("accuracy",), classifier=classifier)
    assert result["metrics"] == {"Accuracy": 0.5}
    with pytest.raises(ConfigError, match="Inception Score"):
        evaluate_images(images, None, feature=extractor, metrics=("is",))
    with pytest.raises(ConfigError, match="reference statistics"):
        evaluate_images(images, None, feature=extractor, metrics=("fd",))
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate_images(images, None, feature=extractor, metrics=("fid",))
    with pytest.raises(ConfigError, match="needs a classifier"):
        evaluate_images(images, None, feature=extractor, metrics=("accuracy",))


def test_classifier_from_a_model_directory(tmp_path):
    from ldmkit.evaluation.classifier import load_classifier
    from ldmkit.evaluation.efficientnet_lite import EfficientNetLite0
    from ldmkit.io.model_dir import save_model_dir

    network = EfficientNetLite0(num_classes=3)
    save_model_dir(tmp_path / "cls", kind="classifier",
                   config={"architecture": "efficientnet-lite0", "num_classes": 3, "resolution": 32},
                   weights={"model": network})
    classifier = load_classifier(tmp_path / "cls")
    images = _images(2)
    logits = classifier(images)
    assert logits.shape == (2, 3)
    from ldmkit.evaluation.efficientnet_lite import preprocess_efflite

    torch.testing.assert_close(logits, network.eval()(preprocess_efflite(images, 32))[1])
    with pytest.raises(ConfigError, match="num_clases"):
        save_model_dir(tmp_path / "bad", kind="classifier", config={"num_clases": 3}, weights={"model": network})
        load_classifier(tmp_path / "bad")
