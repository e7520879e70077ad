"""``ldm eval stats`` and ``ldm eval images`` end to end, with the random-conv feature network."""

import json

import pytest
import torch
import torch.nn.functional as F

from ldmkit.cli.main import main
from ldmkit.io.images import to_pil


def _write_folder(folder, n: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    for i, image in enumerate(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)):
        to_pil(image).save(folder / f"{i:03d}.png")


@pytest.fixture()
def folders(tmp_path):
    _write_folder(tmp_path / "real", 12, 16, seed=0)
    _write_folder(tmp_path / "fake" / "nested", 10, 16, seed=1)
    _write_folder(tmp_path / "big", 6, 24, seed=2)
    return tmp_path


def test_stats_then_images_writes_json(folders, capsys):
    stats = folders / "stats.npz"
    assert main(["eval", "stats", "--data", str(folders / "real"), "--out", str(stats), "--feature", "random-conv",
                 "-q"]) == 0
    assert "12 images (16x16)" in capsys.readouterr().out
    out = folders / "result.json"
    assert main(["eval", "images", str(folders / "fake"), "--reference", str(stats), "--out", str(out),
                 "--kid-subsets", "5", "--kid-subset-size", "8", "-q"]) == 0
    assert "10 images" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"FD-RandomConv", "KD-RandomConv", "KD-RandomConv-std",
                                      "Precision-RandomConv", "Recall-RandomConv"}
    assert result["metrics"]["FD-RandomConv"] > 0
    assert result["num_images"] == 10 and result["images_per_second"] > 0 and result["seconds"] > 0
    settings = result["settings"]
    assert settings["feature"] == "random-conv" and settings["reference"]["count"] == 12
    assert settings["reference"]["path"] == str(stats.resolve())
    # The reference scored against itself: zero distance, full precision and recall.
    assert main(["eval", "images", str(folders / "real"), "--reference", str(stats), "--metrics", "fd,pr", "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["FD-RandomConv"] == pytest.approx(0, abs=1e-6)
    assert printed["metrics"]["Precision-RandomConv"] == 1.0


def test_mismatches_exit_with_one_line_errors(folders, capsys):
    stats = folders / "stats.npz"
    main(["eval", "stats", "--data", str(folders / "real"), "--out", str(stats), "--feature", "random-conv", "-q"])
    capsys.readouterr()
    assert main(["eval", "images", str(folders / "real"), "--reference", str(stats), "--feature", "efflite0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "computed with feature network 'random-conv'" in err
    assert main(["eval", "images", str(folders / "big"), "--reference", str(stats), "-q"]) == 2
    assert "samples are 24x24" in capsys.readouterr().err
    assert main(["eval", "images", str(folders / "big"), "--reference", str(stats), "-q", "--metrics", "fd",
                 "--allow-size-mismatch"]) == 0
    capsys.readouterr()
    assert main(["eval", "stats", "--data", str(folders / "real"), "--out", str(folders / "s2.npz"), "--feature",
                 "random-conv", "--no-features", "-q"]) == 0
    assert main(["eval", "images", str(folders / "real"), "--reference", str(folders / "s2.npz"), "-q"]) == 2
    assert "--no-features" in capsys.readouterr().err


def test_stats_from_a_data_preset_with_overrides(tmp_path, capsys):
    pytest.importorskip("ldmkit.data")
    out = tmp_path / "syn.npz"
    code = main(["eval", "stats", "--data", "synthetic", "resolution=16", "synthetic.count=20", "--limit", "6",
                 "--out", str(out), "--feature", "random-conv", "-q"])
    assert code == 0, capsys.readouterr().err
    from ldmkit.evaluation.stats import load_stats

    stats = load_stats(out)
    assert stats.count == 6 and stats.image_size == (16, 16) and '"resolution": 16' in stats.source
