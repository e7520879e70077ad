"""First-stage weights (KL and VQ) between ldmkit, diffusers' AutoencoderKL / VQModel and the original layout."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL, VQModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_vae_checkpoint,
    create_vae_diffusers_config_from_ldm,
)

from ldmkit.autoencoders import build_autoencoder  # noqa: E402
from ldmkit.interop.diffusers_config import autoencoder_from_diffusers, autoencoder_to_diffusers  # noqa: E402
from ldmkit.interop.keys_vae import VQ_TRAINING_BUFFERS, autoencoder_rules  # noqa: E402
from ldmkit.interop.mapping import add_prefix, export_tensors, import_tensors  # noqa: E402
from ldmkit.interop.original_config import autoencoder_from_original  # noqa: E402
from ldmkit.interop.sd_configs import sd_config  # noqa: E402

BLOCKS = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4)


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def import_into(d: torch.nn.Module):
    config = autoencoder_from_diffusers(dict(d.config))
    ours = build_autoencoder(config).eval()
    state = import_tensors(autoencoder_rules(config, "diffusers"), d.state_dict(), "vae")
    missing = ours.load_state_dict(state, strict=False).missing_keys
    assert set(missing) <= set(VQ_TRAINING_BUFFERS)
    return ours


@pytest.mark.parametrize("attention", [False, True])
def test_autoencoder_kl_encodes_and_decodes_like_diffusers(attention):
    kind = ("AttnDownEncoderBlock2D", "DownEncoderBlock2D") if attention else ("DownEncoderBlock2D",) * 2
    up = ("UpDecoderBlock2D", "AttnUpDecoderBlock2D") if attention else ("UpDecoderBlock2D",) * 2
    d = randomise(AutoencoderKL(down_block_types=kind, up_block_types=up, **BLOCKS))
    ours = import_into(d)
    assert ours.scale_factor == d.config.scaling_factor
    x, z = torch.randn(2, 3, 16, 16), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        moments = ours.encode_distribution(x, scaled=False)
        posterior = d.encode(x).latent_dist
        assert rel_err(moments.mean, posterior.mean) <= 1e-5
        assert rel_err(moments.std, posterior.std) <= 1e-5
        assert rel_err(ours.decode(z * ours.scale_factor), d.decode(z).sample) <= 1e-5
    back = export_tensors(autoencoder_rules(ours.config, "diffusers"), ours.state_dict(), "vae")
    assert set(back) == set(d.state_dict()) and all(torch.equal(back[k], v) for k, v in d.state_dict().items())


def test_vq_model_decodes_like_diffusers():
    d = randomise(VQModel(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                          num_vq_embeddings=32, **BLOCKS))
    ours = import_into(d)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = d.encode(x).latents
        assert rel_err(ours.encode_distribution(x, scaled=False).mean, h) <= 1e-5
        assert rel_err(ours.decode(h * ours.scale_factor), d.decode(h).sample) <= 1e-5
    back = export_tensors(autoencoder_rules(ours.config, "diffusers"), ours.state_dict(), "vae",
                          ignore=VQ_TRAINING_BUFFERS)
    assert all(torch.equal(back[k], v) for k, v in d.state_dict().items()) and set(back) == set(d.state_dict())


def test_original_layout_agrees_with_diffusers_own_converter():
    d = randomise(AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2,
                                up_block_types=("UpDecoderBlock2D",) * 2, **BLOCKS))
    ours = import_into(d)
    original = export_tensors(autoencoder_rules(ours.config, "original"), ours.state_dict(), "vae")
    converted = convert_ldm_vae_checkpoint(add_prefix(original, "first_stage_model."), dict(d.config))
    assert set(converted) == set(d.state_dict())
    assert all(torch.equal(converted[k], v) for k, v in d.state_dict().items())
    again = import_tensors(autoencoder_rules(ours.config, "original"), original, "vae")
    assert all(torch.equal(again[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("name", ["v1-inference.yaml", "x4-upscaling.yaml"])
def test_full_size_sd_vae_keys_and_shapes(name):
    yaml = sd_config(name)
    fs = yaml["model"]["params"]["first_stage_config"]
    config = autoencoder_from_original(fs["target"], fs["params"], yaml["model"]["params"]["scale_factor"])
    theirs_config = create_vae_diffusers_config_from_ldm(yaml, {})
    mine = autoencoder_to_diffusers(config)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "latent_channels", "layers_per_block",
                "scaling_factor"):
        assert mine[key] == theirs_config[key], key
    with torch.device("meta"):
        ours = build_autoencoder(config)
        d = AutoencoderKL(**{k: v for k, v in mine.items() if not k.startswith("_")})
    exported = export_tensors(autoencoder_rules(config, "diffusers"), ours.state_dict(), "vae")
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in d.state_dict().items()}
    original = add_prefix(export_tensors(autoencoder_rules(config, "original"), ours.state_dict(), "vae"),
                          "first_stage_model.")
    converted = convert_ldm_vae_checkpoint(original, theirs_config)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in d.state_dict().items()}
