"""The diffusion transformer: shapes and routes, adaLN-Zero's identity start, the paper's sizes, and the same
latent pipeline as the UNet (train, save, load, sample)."""

import copy
import dataclasses

import pytest
import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers import DiT, DiTConfig
from ldmkit.denoisers.dit import parameter_count, sincos_positions
from ldmkit.errors import ConfigError

TINY = dict(in_channels=3, out_channels=3, patch_size=2, hidden_size=32, depth=2, num_heads=4)


def _jitter(network: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Give a zero-initialised network something to say."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * scale)
    return network


@pytest.mark.parametrize("routes", [{}, {"vector_dim": 6}, {"context_dim": 12}, {"concat_channels": 2},
                                    {"vector_dim": 6, "context_dim": 12, "concat_channels": 2}])
def test_output_has_the_input_shape_for_every_route_and_size(routes):
    net = _jitter(DiT(DiTConfig(**TINY, **routes))).eval()
    for h, w in ((8, 8), (6, 10)):  # other sizes than any training size: positions are computed per grid
        x = torch.randn(2, 3, h, w)
        cond = Conditioning(vector=torch.randn(2, 6) if "vector_dim" in routes else None,
                            context=torch.randn(2, 5, 12) if "context_dim" in routes else None,
                            concat=torch.randn(2, 2, h, w) if "concat_channels" in routes else None)
        out = net(x, torch.tensor([10, 900]), cond)
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_a_fresh_dit_predicts_zero_and_each_fresh_block_is_the_identity():
    torch.manual_seed(0)
    net = DiT(DiTConfig(**TINY, vector_dim=6, context_dim=12)).eval()
    cond = Conditioning(vector=torch.randn(2, 6), context=torch.randn(2, 5, 12))
    assert torch.count_nonzero(net(torch.randn(2, 3, 8, 8), torch.tensor([3, 700]), cond)) == 0
    tokens, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    for block in net.blocks:
        assert torch.equal(block(tokens, c, cond.context, None), tokens)


def test_the_output_follows_every_condition_and_the_timestep():
    net = _jitter(DiT(DiTConfig(**TINY, vector_dim=6, context_dim=12))).eval()
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([500])
    base = Conditioning(vector=torch.zeros(1, 6), context=torch.zeros(1, 5, 12))
    ref = net(x, t, base)
    assert not torch.allclose(net(x, t, Conditioning(vector=torch.ones(1, 6), context=base.context)), ref)
    assert not torch.allclose(net(x, t, Conditioning(vector=base.vector, context=torch.ones(1, 5, 12))), ref)
    assert not torch.allclose(net(x, torch.tensor([50]), base), ref)


def test_patches_are_put_back_where_they_came_from():
    net = DiT(DiTConfig(**TINY))
    p = net.config.patch_size
    image = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    # The inverse of patchify: [B, C, H, W] → [B, N, p·p·C] in the layout unpatchify reads.
    tokens = image.reshape(2, 3, 2, p, 3, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 6, p * p * 3)
    assert torch.equal(net.unpatchify(tokens, 2, 3), image)


def test_positions_differ_everywhere_and_keep_their_unit_scale():
    positions = sincos_positions(4, 6, 32)  # [24, 32]
    assert positions.shape == (24, 32)
    assert torch.cdist(positions, positions).add(torch.eye(24) * 10).min() > 0.1  # no two cells alike
    assert torch.allclose(positions.pow(2).sum(-1), torch.full((24,), 16.0))  # sin² + cos² per frequency


@pytest.mark.parametrize("name, millions", [("DiT-S/2", 33), ("DiT-B/2", 130), ("DiT-L/2", 458), ("DiT-XL/2", 675)])
def test_presets_have_the_parameter_counts_of_table_1(name, millions):
    # Table 1 counts the class-conditional ImageNet models: 4 latent channels in, 8 out (learned Σ) and a label
    # embedding table of 1,001 × D, which in ldmkit lives in the conditioner; the paper rounds to millions.
    config = DiTConfig.preset(name, in_channels=4, out_channels=8)
    count = parameter_count(config) + 1001 * config.hidden_size
    assert abs(count / 1e6 - millions) <= 0.5


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = _jitter(DiT(DiTConfig(**TINY, context_dim=12)))
    checkpointed = copy.deepcopy(plain)
    checkpointed.config = dataclasses.replace(plain.config, gradient_checkpointing=True)
    nets = [plain, checkpointed]
    x, t, cond = torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), Conditioning(context=torch.randn(2, 5, 12))
    grads = []
    for net in nets:
        net.train()
        net(x, t, cond).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bad_configs_and_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match="num_heads"):
        DiTConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ConfigError, match="no DiT preset named 'DiT-M/2'"):
        DiTConfig.preset("DiT-M/2")
    net = DiT(DiTConfig(**TINY))
    with pytest.raises(ConfigError, match="not a multiple of 2"):
        net(torch.randn(1, 3, 7, 8), torch.tensor([1]))
    with pytest.raises(ConfigError, match="no cross-attention"):
        net(torch.randn(1, 3, 8, 8), torch.tensor([1]), Conditioning(context=torch.randn(1, 2, 12)))


def test_a_dit_model_trains_saves_loads_and_samples(tmp_path):
    from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
    from ldmkit.config import load_config
    from ldmkit.data import build_dataset
    from ldmkit.model import LatentDiffusionModel
    from ldmkit.pipelines import LatentDiffusionPipeline
    from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
    from ldmkit.training.loop import train

    torch.manual_seed(0)
    ae_cfg = AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3,
                               mid_attention=False)
    save_autoencoder(tmp_path / "ae", build_autoencoder(ae_cfg), ae_cfg)
    experiment = load_config(DiffusionExperiment, None, [
        f"autoencoder={tmp_path / 'ae'}", "backbone=dit", "dit.hidden_size=32", "dit.depth=2", "dit.num_heads=4",
        "conditioner.kind=class", "conditioner.num_classes=16", "conditioner.embed_dim=16",
        "data.source=synthetic", "data.resolution=16", "data.synthetic.count=16", "data.synthetic.supersample=1",
        "train.steps=3", "train.batch_size=4", "train.device=cpu", "train.progress=false", "train.image_every=0",
        f"train.out={tmp_path / 'run'}"], group="diffusion")
    dataset = build_dataset(experiment.data, split="train")
    model_dir = train(DiffusionTask(experiment, dataset, None), experiment.train, dataset, experiment)
    assert (model_dir / "dit.safetensors").is_file() and not (model_dir / "unet.safetensors").exists()
    model = LatentDiffusionModel.load(model_dir)
    assert isinstance(model.unet, DiT) and model.unet.config.vector_dim == 16 and model.size_multiple == 4
    images = LatentDiffusionPipeline(model)(class_label=[0, 3], steps=2, sampler="ddim", output="tensor",
                                            progress=False)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
