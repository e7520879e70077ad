"""`ldm fit` on a tiny folder of generated images: dry run, a whole run with a resume, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ldmkit.cli.main import main

# A plan small enough for seconds on a CPU; the evaluation's feature network is the test one.
TINY = ["--time", "10m", "--device", "cpu", "--set", "ae.steps=3", "ldm.steps=4", "eval.samples=6",
        "eval.feature=random-conv", "eval.lpips=false", "ae_loss.perceptual_weight=0", "val_fraction=0.25",
        "eval.sampler_steps=2", "eval.grid_seeds=2"]


def write_folder(root, classes=3, per_class=8, side=16, captions=None):
    """``classes`` sub-folders of ``per_class`` PNGs: a coloured square on white, one colour per class."""
    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.full((side, side, 3), 255, np.uint8)
            x, y = rng.integers(1, side - 6, 2)
            pixels[y:y + 5, x:x + 5] = colours[k % 3]
            Image.fromarray(pixels).save(root / f"c{k}" / f"{i}.png")
            if captions is not None and (k * per_class + i) < captions:
                (root / f"c{k}" / f"{i}.txt").write_text(f"a square of colour {k}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images") / "classes")


def run(capsys, *args):
    code = main(["fit", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dry_run_prints_the_plan_and_writes_plan_json(folder, tmp_path, capsys):
    code, out, _ = run(capsys, folder, "--out", tmp_path / "run", "--time", "10m", "--device", "cpu", "--dry-run")
    assert code == 0
    assert "24 usable images, 0 bad" in out and "3 classes from the sub-folders" in out
    assert "resolution 16 px, f = 2, latent 8x8x3" in out
    assert "conditioned on 3 class labels" in out and "expected time" in out
    record = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert record["plan"]["resolution"] == 16 and record["survey"]["count"] == 24
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["plan.json"]  # nothing trained


def test_a_whole_run_resumes_after_the_autoencoder_without_retraining_it(folder, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = run(capsys, folder, "--out", out_dir, "--stop-after", "autoencoder", *TINY)
    assert code == 0 and "stopped after the autoencoder stage" in out
    stages = json.loads((out_dir / "stages.json").read_text())
    assert list(stages) == ["autoencoder"] and stages["autoencoder"]["done"]
    weights = out_dir / "autoencoder" / "model" / "model.safetensors"
    written = weights.stat().st_mtime_ns

    code, out, _ = run(capsys, folder, "--out", out_dir, *TINY)
    assert code == 0 and "resuming: autoencoder done" in out
    assert "train autoencoder" not in out and weights.stat().st_mtime_ns == written
    stages = json.loads((out_dir / "stages.json").read_text())
    assert stages["autoencoder"]["attempts"] == 1
    assert all(stages[s]["done"] for s in ("latents", "diffusion", "model", "evaluation", "report"))
    assert (out_dir / "model" / "config.json").is_file() and (out_dir / "model" / "autoencoder").is_dir()
    summary = json.loads((out_dir / "eval" / "eval.json").read_text())
    assert summary["held_out_images"] == 6
    assert set(summary["reconstruction"]) == {"autoencoder", "bicubic"}
    assert "FD-RandomConv" in summary["generation"]["metrics"]
    assert summary["grid"]["rows"] == ["c0", "c1", "c2"] and (out_dir / "eval" / "samples.png").is_file()
    page = (out_dir / "report.html").read_text()
    for section in ("<h2>Plan</h2>", "<h2>Stages</h2>", "<h2>Evaluation</h2>", "Training: autoencoder",
                    "Training: diffusion", "eval/samples.png"):
        assert section in page

    # Everything is done: a third run does nothing; another budget is refused unless --restart.
    code, out, _ = run(capsys, folder, "--out", out_dir, *TINY)
    assert code == 0 and "[1/6]" not in out
    code, _, err = run(capsys, folder, "--out", out_dir, *TINY, "--time", "20m")
    assert code == 2 and "started under another plan (" in err and "time_seconds 600.0 -> 1200.0" in err
    assert "--restart" in err
    assert len(err.strip().splitlines()) == 1


def one_line_error(capsys, *args) -> str:
    code, _, err = run(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_folder_without_usable_images_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert "holds no images" in one_line_error(capsys, tmp_path / "empty", "--out", tmp_path / "run", "--dry-run")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    assert "no usable images" in one_line_error(capsys, broken, "--out", tmp_path / "run", "--dry-run")


def test_some_images_with_captions_and_some_without_is_refused(tmp_path, capsys):
    folder = write_folder(tmp_path / "half", captions=10)
    error = one_line_error(capsys, folder, "--out", tmp_path / "run", "--dry-run")
    assert "10 of 24 images have captions and 14 do not" in error and "--labels" in error
    # --labels trains on the classes instead.
    code, out, _ = run(capsys, folder, "--out", tmp_path / "run", "--labels", "--device", "cpu", "--dry-run")
    assert code == 0 and "conditioned on 3 class labels" in out


def test_a_time_budget_too_small_for_any_plan_is_refused(folder, tmp_path, capsys):
    error = one_line_error(capsys, folder, "--out", tmp_path / "run", "--time", "5s", "--device", "cpu", "--dry-run")
    assert "a time budget of 5s is too small for any plan" in error and "give --time" in error


def test_a_device_too_small_for_the_smallest_plan_is_refused(folder, tmp_path, capsys, monkeypatch):
    from ldmkit.fit import command
    from ldmkit.fit.estimates import DeviceInfo

    monkeypatch.setattr(command, "device_info", lambda device, gpus=1: DeviceInfo("gpu", 2**27, gpus, "small GPU"))
    error = one_line_error(capsys, folder, "--out", tmp_path / "run", "--dry-run")
    assert "small GPU (128.0 MB) is too small for the smallest plan" in error


def test_time_budgets_parse():
    from ldmkit.cli.fit import parse_time

    assert [parse_time(t) for t in ("2h", "90m", "1h30m", "45s", "30")] == [7200, 5400, 5400, 45, 1800]
    with pytest.raises(Exception, match="is not a time"):
        parse_time("soon")
