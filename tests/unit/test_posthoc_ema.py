"""Post-hoc EMA: σ_rel ↔ γ, the power EMA's profile, reconstruction of an EMA never run from two that were, and
`ldm ema` on a real (tiny) run whose snapshots survive a resume."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ldmkit.cli.main import main as ldm
from ldmkit.errors import CheckpointError, ConfigError
from ldmkit.model import LatentDiffusionModel
from ldmkit.training.posthoc_ema import (PowerEMA, gamma_from_sigma_rel, list_snapshots, reconstruction_weights,
                                         sigma_rel_from_gamma)


def test_sigma_rel_and_gamma_are_inverse_and_match_edm2():
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2's γ for its two profiles
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma in (0.01, 0.05, 0.1, 0.2):
        assert sigma_rel_from_gamma(gamma_from_sigma_rel(sigma)) == pytest.approx(sigma, rel=1e-9)
    with pytest.raises(ConfigError, match="outside"):
        gamma_from_sigma_rel(0.3)


def _trajectory(T=2000):
    t = np.arange(1, T + 1)
    return np.sin(t / 150.0) + 0.3 * np.cos(t / 37.0)  # a "weight" that drifts on two time scales


def _power_ema(values, gamma, every):
    """The power EMA of a scalar sequence through PowerEMA itself, with (step, value) snapshots."""
    param = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        param.weight.fill_(float(values[0]))
    ema = PowerEMA(param, gamma)
    snaps = []
    for t, value in enumerate(values, start=1):
        with torch.no_grad():
            param.weight.fill_(float(value))
        ema.update(param, t)
        if t % every == 0:
            snaps.append((t, gamma, float(ema.model.weight)))
    return float(ema.model.weight), snaps


@pytest.mark.parametrize("target", [0.03, 0.07, 0.15])
def test_an_ema_never_run_is_reconstructed_from_two_that_were(target):
    values = _trajectory()
    snaps = []
    for sigma in (0.05, 0.10):
        snaps += _power_ema(values, gamma_from_sigma_rel(sigma), every=100)[1]
    gamma = gamma_from_sigma_rel(target)
    exact, _ = _power_ema(values, gamma, every=len(values))
    weights = reconstruction_weights([(t, g) for t, g, _ in snaps], len(values), gamma)
    rebuilt = sum(w * v for w, (_, _, v) in zip(weights, snaps))
    # measured: |error| 5e-4, 3e-6, 1e-5 for σ_rel 0.03, 0.07, 0.15 (values of size ~1)
    assert abs(rebuilt - exact) < 2e-3 and abs(weights.sum() - 1) < 1e-3


def test_the_power_ema_weighs_step_tau_like_tau_to_the_gamma():
    gamma, T = 3.0, 400
    weights = []
    for tau in (50, 200, 400):  # the EMA of a sequence that is 1 at step τ alone is the weight of step τ
        values = np.zeros(T)
        values[tau - 1] = 1.0
        weights.append(_power_ema(values, gamma, every=T)[0])
    expected = [(gamma + 1) * tau**gamma / T ** (gamma + 1) for tau in (50, 200, 400)]
    assert np.allclose(weights, expected, rtol=0.03)


TINY = ["conditioner.kind=class", "conditioner.num_classes=16", "conditioner.embed_dim=8", "unet.model_channels=8",
        "unet.channel_mult=[1,2]", "unet.num_res_blocks=1", "unet.attention_resolutions=[]", "unet.num_heads=2",
        "data.source=synthetic", "data.resolution=16", "data.synthetic.count=8", "data.synthetic.supersample=1",
        "train.batch_size=4", "train.device=cpu", "train.progress=false", "train.image_every=0",
        "train.checkpoint_every=2", "train.lr=1e-3", "posthoc_ema.snapshot_every=2"]


def test_ldm_ema_rebuilds_a_model_from_a_resumed_runs_snapshots(tmp_path, make_first_stage):
    ae = make_first_stage((1, 2))
    run = tmp_path / "run"
    args = ["train", "diffusion", f"autoencoder={ae}", f"train.out={run}", *TINY]
    assert ldm([*args, "train.steps=2"]) == 0
    assert ldm([*args, "train.steps=4"]) == 0  # resumed: the power EMAs continue from the checkpoint
    snaps = list_snapshots(run)
    assert sorted({s for s, _, _ in snaps}) == [2, 4] and len(snaps) == 4
    # At a snapshot's own width and step the reconstruction is that snapshot.
    gamma_05 = next(g for _, g, _ in snaps if abs(sigma_rel_from_gamma(g) - 0.05) < 1e-6)
    assert ldm(["ema", str(run), "--sigma-rel", "0.05", "--out", str(tmp_path / "ema")]) == 0
    rebuilt = LatentDiffusionModel.load(tmp_path / "ema").unet.state_dict()
    snapshot = load_file(str(next(p for s, g, p in snaps if s == 4 and g == gamma_05)))
    assert all(torch.allclose(rebuilt[k], snapshot[k], atol=1e-5) for k in snapshot)
    assert ldm(["ema", str(run), "--sigma-rel", "0.08", "--step", "2", "--out", str(tmp_path / "ema2")]) == 0
    assert LatentDiffusionModel.load(tmp_path / "ema2").extra["experiment"]["posthoc_ema"]["step"] == 2
    assert ldm(["ema", str(run), "--sigma-rel", "0.08", "--step", "3", "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(CheckpointError, match="no ema-snapshots"):
        from ldmkit.training.posthoc_ema import reconstruct

        reconstruct(tmp_path, 0.08)
    assert math.isfinite(float(sum(v.float().sum() for v in rebuilt.values())))
