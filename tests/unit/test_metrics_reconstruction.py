"""PSNR and SSIM of reconstructions, checked against scikit-image."""

import numpy as np
import pytest
import torch

from ldmkit.errors import ConfigError
from ldmkit.evaluation.reconstruction import ReconstructionMeter, gaussian_window, psnr, ssim


def _pair(seed: int = 0, shape=(3, 3, 24, 21), noise: float = 0.2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    y = (x + noise * torch.randn(shape, generator=g, dtype=dtype)).clamp(-1, 1)
    return x, y


def _np(image: torch.Tensor) -> np.ndarray:
    return ((image + 1) / 2).permute(1, 2, 0).numpy()


def test_ssim_and_psnr_match_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _pair()
    ours_ssim, ours_psnr = ssim(x, y), psnr(x, y)
    assert ours_ssim.shape == (3,) and ours_psnr.shape == (3,)
    for i in range(3):
        expected = metrics.structural_similarity(_np(x[i]), _np(y[i]), channel_axis=2, gaussian_weights=True,
                                                 sigma=1.5, use_sample_covariance=False, data_range=1.0)
        assert float(ours_ssim[i]) == pytest.approx(expected, abs=1e-7)
        assert float(ours_psnr[i]) == pytest.approx(
            metrics.peak_signal_noise_ratio(_np(x[i]), _np(y[i]), data_range=1.0), rel=1e-9)


def test_psnr_on_8_bit_scale_and_identity():
    x, y = _pair(noise=0.1)
    u8 = lambda t: ((t + 1) / 2 * 255).round()
    mse255 = (u8(x) - u8(y)).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(x, y, quantize=True), 10 * torch.log10(255**2 / mse255))
    assert torch.all(psnr(x, x) == 100)  # floored MSE instead of infinity
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_ssim_drops_with_more_noise_and_window_is_wang_et_al():
    x, _ = _pair()
    values = [float(ssim(x, _pair(noise=s)[1]).mean()) for s in (0.05, 0.2, 0.5)]
    assert values[0] > values[1] > values[2]
    w = gaussian_window()
    assert w.shape == (11,) and float(w.sum()) == pytest.approx(1) and float(w[5] / w[4]) == pytest.approx(
        np.exp(1 / (2 * 1.5**2)))


def test_meter_and_shape_errors():
    meter = ReconstructionMeter()
    x, y = _pair(dtype=torch.float32)
    meter.update(x[:2], y[:2])
    meter.update(x[2:], y[2:])
    result = meter.compute()
    assert result["psnr"] == pytest.approx(float(psnr(x, y).mean()), rel=1e-6)
    assert result["ssim"] == pytest.approx(float(ssim(x, y).mean()), rel=1e-6)
    with pytest.raises(ConfigError, match="one shape"):
        psnr(x, y[:, :, :10])
    with pytest.raises(ConfigError, match="at least 11 px"):
        ssim(x[..., :8, :8], y[..., :8, :8])
