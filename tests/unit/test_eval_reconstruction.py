"""First-stage reconstruction evaluation: metrics, the bicubic baseline, VQ code usage, the report and the CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ldmkit.assets import is_fetched
from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
from ldmkit.cli.main import main
from ldmkit.evaluation.extractor import build_feature_extractor
from ldmkit.autoencoders.lpips import LPIPS
from ldmkit.evaluation.reconstruction import psnr
from ldmkit.evaluation.reconstruction_eval import (
    bicubic_factor,
    bicubic_roundtrip,
    bicubic_size,
    comparison_grid,
    evaluate_reconstruction,
    write_reconstruction_report,
)

needs_lpips = pytest.mark.skipif(not is_fetched("lpips"), reason="lpips asset not fetched (ldm assets fetch lpips)")


def tiny(kind="kl", **kw):
    base = {"kind": kind, "base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "latent_channels": 4,
            "groups": 4, "mid_attention": False, "codebook_size": 16}
    base.update(kw)
    return AutoencoderConfig(**base)


def images(n=6, size=16, seed=0):
    """Smooth random images [n, 3, size, size] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def batches(x, batch_size=4):
    return [{"image": x[i:i + batch_size]} for i in range(0, x.shape[0], batch_size)]


# --- the bicubic baseline ------------------------------------------------------------------------------------------

def test_bicubic_size_keeps_the_number_of_latent_values():
    assert bicubic_factor(8, 3) == 8 and bicubic_size(256, 256, 8, 3) == (32, 32)  # c = 3: exactly f
    assert bicubic_factor(4, 12) == pytest.approx(2.0) and bicubic_size(64, 32, 4, 12) == (32, 16)
    # f = 8, c = 4 at 256 px: s = 8 * sqrt(3/4) ≈ 6.93, side 256 / 6.93 = 36.95 → 37 (3·37² ≈ 4·32²).
    assert bicubic_factor(8, 4) == pytest.approx(8 * math.sqrt(0.75))
    assert bicubic_size(256, 256, 8, 4) == (37, 37)
    assert bicubic_size(32, 32, 1, 1, image_channels=1) == (32, 32)  # grey identity
    assert bicubic_size(16, 16, 1, 64) == (16, 16)  # never larger than the image
    assert bicubic_size(16, 16, 32, 1) == (1, 1)  # never smaller than one pixel


def test_bicubic_roundtrip_is_lossy_and_clamped():
    x = images(2, 16)
    same = bicubic_roundtrip(x, (16, 16))
    assert torch.equal(same, x)
    y = bicubic_roundtrip(x * 1.5, (4, 4))
    assert y.shape == x.shape and y.abs().max() <= 1
    assert 0 < (y - x).abs().mean() < 0.5


# --- the evaluation ---------------------------------------------------------------------------------------------------

def test_identity_autoencoder_is_perfect():
    model = build_autoencoder(AutoencoderConfig(kind="identity"))
    x = images(5, 16)
    lp = LPIPS("vgg16")  # random weights: identical images are still at distance 0
    feats = build_feature_extractor("random-conv", device="cpu")
    result = evaluate_reconstruction(model, batches(x), lpips=lp, features=feats, device="cpu")
    ae = result["metrics"]["autoencoder"]
    assert ae["psnr"] == pytest.approx(100.0) and ae["ssim"] == pytest.approx(1.0)
    assert ae["lpips"] == pytest.approx(0.0, abs=1e-7) and ae["rFD-RandomConv"] == pytest.approx(0.0, abs=1e-6)
    # f = 1, c = 3: the bicubic baseline keeps the full size, so it is perfect too.
    assert result["metrics"]["bicubic"]["psnr"] == pytest.approx(100.0)
    assert result["settings"]["bicubic"]["low_res_size"] == {"16x16": [16, 16]}
    assert result["num_images"] == 5 and result["images_per_second"] > 0
    assert "codebook_usage" not in ae


def test_kl_autoencoder_against_bicubic():
    torch.manual_seed(0)
    model = build_autoencoder(tiny("kl"))
    x = images(6, 16)
    feats = build_feature_extractor("random-conv", device="cpu")
    result = evaluate_reconstruction(model, batches(x), features=feats, examples=3)
    ae, bic = result["metrics"]["autoencoder"], result["metrics"]["bicubic"]
    # PSNR of the untrained model equals the metric on its clamped reconstructions.
    with torch.no_grad():
        rec = model(x, sample_posterior=False)[0].clamp(-1, 1)
    assert ae["psnr"] == pytest.approx(float(psnr(x, rec, quantize=True).mean()), rel=1e-5)
    assert set(ae) == {"psnr", "ssim", "rFD-RandomConv"} and set(bic) == set(ae)
    assert bic["psnr"] > ae["psnr"] and ae["rFD-RandomConv"] > bic["rFD-RandomConv"] > 0
    # f = 2, c = 4 at 16 px: s = 2·sqrt(3/4) ≈ 1.73, 16 / 1.73 = 9.2 → 9.
    assert result["settings"]["bicubic"]["low_res_size"] == {"16x16": [9, 9]}
    assert result["settings"]["latent_shape"] == [4, 8, 8]
    assert any("LPIPS left out" in n for n in result["notes"])
    assert {k: v.shape for k, v in result["examples"].items()} == {k: (3, 3, 16, 16) for k in
                                                                   ("original", "autoencoder", "bicubic")}
    json.dumps({k: v for k, v in result.items() if k != "examples"})  # JSON-ready


def test_vq_codebook_usage_and_perplexity_over_the_whole_set():
    torch.manual_seed(0)
    model = build_autoencoder(tiny("vq", latent_channels=3))
    x = images(6, 16)
    result = evaluate_reconstruction(model, batches(x, 2), bicubic=False)
    ae = result["metrics"]["autoencoder"]
    z = model.quant_conv(model.encoder(x))
    _, idx = model.quantizer.quantize(z)
    counts = torch.bincount(idx.flatten(), minlength=16).double()
    probs = counts / counts.sum()
    expected_perplexity = math.exp(-float((probs[probs > 0] * probs[probs > 0].log()).sum()))
    assert ae["codebook_usage"] == pytest.approx(float((counts > 0).double().mean()))
    assert ae["perplexity"] == pytest.approx(expected_perplexity, rel=1e-5)
    assert "bicubic" not in result["metrics"] and result["settings"]["codebook_size"] == 16


def test_grey_images_and_report(tmp_path):
    torch.manual_seed(0)
    model = build_autoencoder(tiny("kl", in_channels=1, out_channels=1, latent_channels=1))
    x = images(4, 16)[:, :1]
    result = evaluate_reconstruction(model, [x[:3], (x[3:], None)], lpips=LPIPS("vgg16"), examples=8)
    assert result["num_images"] == 4 and result["settings"]["image_channels"] == 1
    assert result["metrics"]["autoencoder"]["lpips"] > 0
    assert result["settings"]["bicubic"]["low_res_size"] == {"16x16": [8, 8]}  # C = c = 1: exactly f
    json_path, png_path = write_reconstruction_report(result, tmp_path / "out", extra={"autoencoder": "x"})
    report = json.loads(json_path.read_text())
    assert "examples" not in report and report["autoencoder"] == "x"
    picture = Image.open(png_path)
    grid = comparison_grid(result["examples"])
    # 4 rows × 3 columns of 16 px images enlarged 8× to 128 px, with 2 px padding.
    assert picture.size == (3 * 130 + 2, 4 * 130 + 2) == (grid.shape[2], grid.shape[1])


# --- the command ----------------------------------------------------------------------------------------------------

def _saved(tmp_path, kind="vq"):
    torch.manual_seed(0)
    cfg = tiny(kind, latent_channels=3) if kind != "identity" else AutoencoderConfig(kind="identity")
    return save_autoencoder(tmp_path / "ae", build_autoencoder(cfg))


DATA = ["--data", "synthetic", "resolution=16", "synthetic.count=40", "synthetic.supersample=1"]


def test_cli_writes_json_and_png(tmp_path, capsys):
    ae = _saved(tmp_path, "vq")
    out = tmp_path / "eval"
    code = main(["eval", "reconstruction", "--autoencoder", str(ae), *DATA, "--limit", "3", "--batch-size", "2",
                 "--out", str(out), "--no-lpips", "--feature", "random-conv", "--device", "cpu", "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 images" in printed and "reconstruction.json" in printed
    report = json.loads((out / "reconstruction.json").read_text())
    assert set(report) >= {"metrics", "num_images", "seconds", "images_per_second", "device", "settings", "notes",
                           "autoencoder", "source"}
    assert report["num_images"] == 3 and report["device"] == "cpu"
    assert report["autoencoder"] == str(ae.resolve()) and report["source"]["split"] == "test"
    assert set(report["metrics"]["autoencoder"]) == {"psnr", "ssim", "rFD-RandomConv", "codebook_usage", "perplexity"}
    assert set(report["metrics"]["bicubic"]) == {"psnr", "ssim", "rFD-RandomConv"}
    assert report["settings"]["bicubic"]["low_res_size"] == {"16x16": [8, 8]}  # c = 3: exactly f = 2
    assert Image.open(out / "reconstruction.png").size == (3 * 130 + 2, 3 * 130 + 2)


def test_cli_missing_feature_weights_is_a_note_unless_required(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LDMKIT_HOME", str(tmp_path / "empty-home"))
    ae = _saved(tmp_path, "identity")
    args = ["eval", "reconstruction", "--autoencoder", str(ae), *DATA, "--limit", "2", "--out", str(tmp_path / "o"),
            "--no-lpips", "--device", "cpu", "-q"]
    assert main(args) == 0
    report = json.loads((tmp_path / "o" / "reconstruction.json").read_text())
    assert report["metrics"]["autoencoder"] == {"psnr": 100.0, "ssim": pytest.approx(1.0)}
    assert any("ldm assets fetch efficientnet-lite0" in n for n in report["notes"])
    capsys.readouterr()
    assert main(args + ["--require-fd"]) == 2
    assert "ldm assets fetch efficientnet-lite0" in capsys.readouterr().err
    # Without --no-lpips the missing LPIPS weights are an error naming the fetch command.
    assert main([a for a in args if a != "--no-lpips"] + ["--feature", "none"]) == 2
    assert "ldm assets fetch lpips" in capsys.readouterr().err


@pytest.mark.assets
@needs_lpips
@pytest.mark.skipif(not is_fetched("efficientnet-lite0"), reason="efficientnet-lite0 asset not fetched")
def test_cli_with_real_lpips_and_efflite0(tmp_path):
    ae = _saved(tmp_path, "identity")
    out = tmp_path / "eval"
    assert main(["eval", "reconstruction", "--autoencoder", str(ae), *DATA, "--limit", "2", "--out", str(out),
                 "--device", "cpu", "-q"]) == 0
    report = json.loads((out / "reconstruction.json").read_text())
    ae_metrics = report["metrics"]["autoencoder"]
    assert set(ae_metrics) == {"psnr", "ssim", "lpips", "rFD-EffLite0"}  # never called FID
    assert ae_metrics["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert ae_metrics["rFD-EffLite0"] == pytest.approx(0.0, abs=1e-6)
    assert report["settings"]["lpips"] == "LPIPS-vgg16 v0.1"
    assert report["settings"]["feature_network"]["name"] == "efflite0"
