"""`ldm convert` of CompVis latent-diffusion models without a text encoder, on tiny random-weight `.ckpt` files in
the original layout with YAMLs in the configs/latent-diffusion layout: unconditional (celebahq / ffhq / bedrooms:
VQ-f4, head width; lsun_churches: KL, heads, scale-shift norm, resnet up/down, scale_by_std), class-conditional
(cin256-v2: one cross-attention token), super-resolution (bsr_sr) and semantic synthesis (SpatialRescaler). The
converted UNet is compared with diffusers' UNet2DModel / UNet2DConditionModel holding the same weights, the
condition with a direct computation of the original cond stage; the rest is refused in one line."""

from __future__ import annotations

import collections
import dataclasses
import copy

import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel, UNet2DModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint  # noqa: E402

from ldmkit.autoencoders import build_autoencoder  # noqa: E402
from ldmkit.cli.main import main as ldm  # noqa: E402
from ldmkit.conditioning.concat import semantic_concat  # noqa: E402
from ldmkit.conditioning.config import ConditionerConfig  # noqa: E402
from ldmkit.conditioning.labels import ClassConditioner  # noqa: E402
from ldmkit.conditioning.types import Conditioning  # noqa: E402
from ldmkit.errors import CheckpointError, ConfigError  # noqa: E402
from ldmkit.interop.convert import convert  # noqa: E402
from ldmkit.interop.keys_unet import unet_rules  # noqa: E402
from ldmkit.interop.keys_vae import VQ_TRAINING_BUFFERS, autoencoder_rules  # noqa: E402
from ldmkit.interop.mapping import add_prefix, export_tensors, import_tensors  # noqa: E402
from ldmkit.interop.original_config import model_from_original  # noqa: E402
from ldmkit.model import LatentDiffusionModel  # noqa: E402
from ldmkit.pipelines import load_pipeline  # noqa: E402

UNET = "model.diffusion_model."
LDM = "ldm.models.diffusion.ddpm.LatentDiffusion"
EMB = 32  # class embedding width = cross-attention context width
ROWS = 1001  # cin256-v2: ImageNet's 1000 classes + the unconditional label 1000


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def randomise(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1)
    return module.eval()


# ----- tiny YAMLs in the configs/latent-diffusion layout ---------------------------------------------------------

def first_stage(kind: str) -> dict:
    """f = 4 (ch_mult 1, 2, 2) with 3 latent channels, as the VQ-f4 of celebahq / cin256-v2 but tiny."""
    dd = {"double_z": kind == "kl", "z_channels": 3, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
          "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    if kind == "kl":
        return {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {"embed_dim": 3, "ddconfig": dd}}
    return {"target": "ldm.models.autoencoder.VQModelInterface", "params": {"embed_dim": 3, "n_embed": 16,
                                                                             "ddconfig": dd}}


def ldm_yaml(unet: dict, cond, *, fs: str = "vq", **params) -> dict:
    base = {"linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "image_size": 8, "channels": 3,
            "first_stage_key": "image", "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                                                        "params": unet},
            "first_stage_config": first_stage(fs), "cond_stage_config": cond}
    return {"model": {"target": LDM, "params": {**base, **params}}}


def unet_params(in_channels=3, **extra) -> dict:
    return {"image_size": 8, "in_channels": in_channels, "out_channels": 3, "model_channels": 32,
            "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 2], **extra}


FAMILIES = {
    # celebahq / ffhq / lsun_bedrooms-ldm-vq-4: num_head_channels, VQ first stage
    "celebahq": ldm_yaml(unet_params(num_head_channels=16), "__is_unconditional__"),
    # lsun_churches-ldm-kl-8: num_heads, scale-shift norm, resnet up/down, KL, scale_by_std
    "churches": ldm_yaml(unet_params(num_heads=2, use_scale_shift_norm=True, resblock_updown=True),
                         "__is_unconditional__", fs="kl", linear_end=0.0155, scale_by_std=True, concat_mode=False,
                         cond_stage_key="image"),
    # cin256-v2: ClassEmbedder → one cross-attention token
    "cin256-v2": ldm_yaml(unet_params(attention_resolutions=[1, 2], num_heads=1, use_spatial_transformer=True,
                                      transformer_depth=1, context_dim=EMB),
                          {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                           "params": {"n_classes": ROWS, "embed_dim": EMB, "key": "class_label"}},
                          conditioning_key="crossattn", cond_stage_key="class_label"),
    # bsr_sr: the low-resolution image concatenated as it is
    "bsr_sr": ldm_yaml(unet_params(in_channels=6, num_head_channels=16), {"target": "torch.nn.Identity"},
                       concat_mode=True, cond_stage_key="LR_image", linear_end=0.0155),
    # semantic_synthesis256: SpatialRescaler (2 bilinear halvings, 1×1 conv 5 → 3)
    "semantic": ldm_yaml(unet_params(in_channels=6, num_heads=2),
                         {"target": "ldm.modules.encoders.modules.SpatialRescaler",
                          "params": {"n_stages": 2, "in_channels": 5, "out_channels": 3}},
                         concat_mode=True, cond_stage_key="segmentation", linear_end=0.0205),
}


# ----- reference networks and the original single files made from them ------------------------------------------

def diffusers_unet(family: str):
    """diffusers' network of the tiny YAML's UNet, random weights."""
    common = dict(sample_size=8, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32)
    if family == "cin256-v2":
        return randomise(UNet2DConditionModel(**common, in_channels=3, cross_attention_dim=EMB, attention_head_dim=1,
                                              down_block_types=("CrossAttnDownBlock2D",) * 2,
                                              up_block_types=("CrossAttnUpBlock2D",) * 2))
    resnet_updown = family == "churches"
    extra = dict(resnet_time_scale_shift="scale_shift", downsample_type="resnet", upsample_type="resnet",
                 attn_norm_num_groups=32) \
        if resnet_updown else {}
    return randomise(UNet2DModel(**common, in_channels=6 if family in ("bsr_sr", "semantic") else 3,
                                 attention_head_dim=16 if family in ("celebahq", "bsr_sr") else 32,
                                 down_block_types=("ResnetDownsampleBlock2D" if resnet_updown else "DownBlock2D",
                                                   "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D" if resnet_updown
                                                 else "UpBlock2D"), **extra))


def original_file(family: str, tmp_path, *, reference, state_edit=None, yaml_edit=None):
    """(the .ckpt, its YAML): the reference's UNet in the original layout, a random first stage, the cond stage."""
    data = copy.deepcopy(FAMILIES[family])
    described = model_from_original(FAMILIES[family])
    unet = reference["unet"]
    uc = described.unet
    if family == "semantic":  # the YAML's UNet reads the 3 mapped channels; ldmkit's reads the 5-class map
        uc = dataclasses.replace(uc, concat_channels=3)
    ours = import_tensors(unet_rules(uc, "diffusers"), unet.state_dict(), "unet")
    state = add_prefix(export_tensors(unet_rules(uc, "original"), ours, "unet"), UNET)
    ae = randomise(build_autoencoder(described.autoencoder), seed=1)
    state.update(add_prefix(export_tensors(autoencoder_rules(described.autoencoder, "original"), ae.state_dict(),
                                           "vae", ignore=VQ_TRAINING_BUFFERS), "first_stage_model."))
    state.update(reference.get("cond_stage", {}))
    if family == "churches":
        state["scale_factor"] = torch.tensor(0.7)  # measured by scale_by_std when training began
    # LatentDiffusion's schedule tables, as the published files hold them.
    betas = torch.linspace(0.0015 ** 0.5, data["model"]["params"]["linear_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    if state_edit:
        state_edit(state)
    if yaml_edit:
        yaml_edit(data["model"]["params"])
    ckpt, config = tmp_path / f"{family}.ckpt", tmp_path / f"{family}.yaml"
    torch.save({"state_dict": collections.OrderedDict(state), "global_step": 1}, ckpt)
    config.write_text(yaml.safe_dump(data))
    return ckpt, config, ae


@pytest.fixture(scope="module")
def references():
    refs = {family: {"unet": diffusers_unet(family)} for family in FAMILIES}
    torch.manual_seed(2)
    refs["cin256-v2"]["cond_stage"] = {"cond_stage_model.embedding.weight": torch.randn(ROWS, EMB)}
    refs["semantic"]["cond_stage"] = {"cond_stage_model.channel_mapper.weight": torch.randn(3, 5, 1, 1) * 0.5}
    return refs


def converted(family, tmp_path, references, **edits):
    ckpt, config, ae = original_file(family, tmp_path, reference=references[family], **edits)
    out = tmp_path / f"{family}-model"
    assert ldm(["convert", str(ckpt), "--config", str(config), "--out", str(out)]) == 0
    return LatentDiffusionModel.load(out), out, ae


def inputs(channels=3):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(2, channels, 8, 8, generator=gen), torch.tensor([7, 940])


# ----- what converts -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["celebahq", "churches"])
def test_unconditional_ldms_match_diffusers_unet2dmodel_and_keep_schedule_and_scale(tmp_path, references, family):
    model, out, ae = converted(family, tmp_path, references)
    assert model.conditioning.unconditional and not model.conditioning.concat.present
    x, t = inputs()
    with torch.no_grad():
        assert rel_err(model.unet(x, t, Conditioning()), references[family]["unet"](x, t).sample) <= 1e-5
    got, want = model.autoencoder.state_dict(), ae.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if k not in VQ_TRAINING_BUFFERS)
    # The LDM code's "linear" schedule: linear in sqrt(β) from linear_start to linear_end, in float64.
    end = FAMILIES[family]["model"]["params"]["linear_end"]
    betas = torch.linspace(0.0015 ** 0.5, end ** 0.5, 1000, dtype=torch.float64) ** 2
    cfg = model.schedule.config
    assert (cfg.kind, cfg.num_timesteps, cfg.prediction) == ("scaled_linear", 1000, "eps")
    assert torch.allclose(model.schedule.betas.double(), betas, rtol=1e-12, atol=0)
    # scale_by_std: the factor stored in the checkpoint; otherwise the YAML's (absent: 1.0).
    assert model.autoencoder.scale_factor == pytest.approx(0.7 if family == "churches" else 1.0, abs=1e-7)
    images = load_pipeline(out, device="cpu")(n=1, steps=2, sampler="ddim", output="tensor", progress=False)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_original_layout_of_the_cross_attention_unet_is_diffusers_own(references, tmp_path):
    """diffusers' converter reads the file's UNet tensors back to the reference's exactly."""
    ckpt, _, _ = original_file("cin256-v2", tmp_path, reference=references["cin256-v2"])
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    d = references["cin256-v2"]["unet"]
    theirs = convert_ldm_unet_checkpoint(state, dict(d.config))
    assert set(theirs) == set(d.state_dict()) and all(torch.equal(theirs[k], v) for k, v in d.state_dict().items())


def test_cin256_v2_class_is_one_context_token_and_row_1000_is_the_null_class(tmp_path, references):
    model, out, _ = converted("cin256-v2", tmp_path, references)
    table = references["cin256-v2"]["cond_stage"]["cond_stage_model.embedding.weight"]
    c = model.conditioning
    assert (c.kind, c.num_classes, c.class_route, c.context_dim, c.vector_dim) == ("class", 1000, "context", EMB, None)
    labels = torch.tensor([3, 999])
    cond = model.conditioner.encode_labels(labels)
    assert cond.vector is None and torch.equal(cond.context, table[labels][:, None])  # [B, 1, D]
    assert torch.equal(model.conditioner.null(2).context, table[[1000, 1000]][:, None])
    x, t = inputs()
    with torch.no_grad():
        want = references["cin256-v2"]["unet"](x, t, encoder_hidden_states=table[labels][:, None]).sample
        assert rel_err(model.unet(x, t, cond), want) <= 1e-5
    notes = model.extra["converted"]["notes"]
    assert any("row 1000 is the null class" in n for n in notes)
    pipe = load_pipeline(out, device="cpu")
    images = pipe(class_label=[5], steps=2, sampler="ddim", guidance=3.0, output="tensor", progress=False)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    with pytest.raises(ConfigError, match="out of range"):
        pipe(class_label=[1000], steps=1, output="tensor", progress=False)  # the null row is not a label


def test_bsr_sr_concatenates_the_low_resolution_image_as_it_is(tmp_path, references):
    from ldmkit.pipelines.upscale import UpscalePipeline

    model, _, _ = converted("bsr_sr", tmp_path, references)
    concat = model.conditioning.concat
    assert model.conditioning.unconditional and concat.super_resolution and concat.channels == 3
    assert concat.low_res_factor == 4
    x, t = inputs()
    low_res = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1  # at the latent grid
    cond = model.conditioner.concat_encoder({"image": torch.zeros(2, 3, 32, 32), "low_res": low_res,
                                             "latent": x})
    assert torch.equal(cond.concat, low_res)
    with torch.no_grad():
        want = references["bsr_sr"]["unet"](torch.cat([x, low_res], 1), t).sample
        assert rel_err(model.unet(x, t, cond), want) <= 1e-5
    images = UpscalePipeline(model)(low_res[:1], steps=2, sampler="ddim", output="tensor", progress=False)
    assert images.shape == (1, 3, 32, 32)


def test_semantic_synthesis_folds_the_spatial_rescaler_into_conv_in(tmp_path, references):
    from ldmkit.pipelines.semantic import SemanticSynthesisPipeline

    model, out, _ = converted("semantic", tmp_path, references)
    concat = model.conditioning.concat
    assert concat.semantic_map and concat.semantic_classes == 5 and concat.semantic_resize == "area"
    assert model.unet.config.concat_channels == 5
    seg = torch.randint(0, 5, (2, 32, 32), generator=torch.Generator().manual_seed(5))
    # The original SpatialRescaler, computed directly: one-hot, bilinear ×½ twice, 1×1 conv without bias.
    onehot = F.one_hot(seg, 5).permute(0, 3, 1, 2).float()
    for _ in range(2):
        onehot = F.interpolate(onehot, scale_factor=0.5, mode="bilinear")
    mapped = F.conv2d(onehot, references["semantic"]["cond_stage"]["cond_stage_model.channel_mapper.weight"])
    x, t = inputs()
    with torch.no_grad():
        want = references["semantic"]["unet"](torch.cat([x, mapped], 1), t).sample
        got = model.unet(x, t, semantic_concat(seg, 5, (8, 8), concat.semantic_resize))
        assert rel_err(got, want) <= 1e-5
    pipe = SemanticSynthesisPipeline.from_pipeline(load_pipeline(out, device="cpu"))
    images = pipe(seg[0].numpy(), steps=2, sampler="ddim", output="tensor", progress=False)
    assert images.shape == (1, 3, 32, 32)


def test_class_route_context_gives_one_token_and_vector_stays_the_default():
    torch.manual_seed(0)
    token = ClassConditioner(ConditionerConfig(kind="class", num_classes=3, embed_dim=4, class_route="context"))
    assert (token.context_dim, token.vector_dim) == (4, None)
    cond = token.encode_labels([0, 2, -1])
    weight = token.embedding.weight
    assert cond.vector is None and torch.equal(cond.context, weight[[0, 2, 3]][:, None])  # -1: the null row 3
    assert torch.equal(token.null(2).context, weight[[3, 3]][:, None])
    dropped = token.encode_labels([1, 1], drop=torch.tensor([True, False]))
    assert torch.equal(dropped.context[:, 0], weight[[3, 1]])
    plain = ClassConditioner(ConditionerConfig(kind="class", num_classes=3, embed_dim=4))
    assert (plain.context_dim, plain.vector_dim) == (None, 4)
    assert plain.encode_labels([1]).context is None and plain.encode_labels([1]).vector.shape == (1, 4)


# ----- what is refused ---------------------------------------------------------------------------------------------

def _refused(capsys, tmp_path, ckpt, config, match):
    out = tmp_path / "refused"
    assert ldm(["convert", str(ckpt), "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]


@pytest.mark.parametrize("edit, match", [
    (lambda p: p["cond_stage_config"].update(target="ldm.modules.encoders.modules.BERTEmbedder"),
     "BERTEmbedder with a cross-attention UNet is not supported"),
    (lambda p: p["cond_stage_config"]["params"].pop("n_classes"), "n_classes 1000: its table has no null class"),
    (lambda p: p["unet_config"]["params"].update(model_channels=64), "does not match these weights"),
])
def test_a_yaml_that_does_not_fit_is_one_line_and_writes_nothing(tmp_path, references, capsys, edit, match):
    ckpt, config, _ = original_file("cin256-v2", tmp_path, reference=references["cin256-v2"], yaml_edit=edit)
    _refused(capsys, tmp_path, ckpt, config, match)


def test_the_compvis_inpainting_model_is_refused_naming_why(tmp_path, references, capsys):
    def inpainting(p):
        p.update(cond_stage_config="__is_first_stage__", cond_stage_key="masked_image", concat_mode=True)
        p["unet_config"]["params"]["in_channels"] = 7
        p["first_stage_config"]["params"]["ddconfig"]["attn_type"] = "none"

    ckpt, config, _ = original_file("celebahq", tmp_path, reference=references["celebahq"], yaml_edit=inpainting)
    _refused(capsys, tmp_path, ckpt, config, "CompVis inpainting LDM")


def test_cond_stage_tensors_and_the_stored_scale_must_fit(tmp_path, references):
    # An unconditional YAML for a file with a class table; a class YAML for a file without one.
    table = {"cond_stage_model.embedding.weight": torch.zeros(ROWS, EMB)}
    ckpt, config, _ = original_file("celebahq", tmp_path, reference=references["celebahq"],
                                    state_edit=lambda s: s.update(table))
    with pytest.raises(CheckpointError, match="cond stage: .* has cond_stage_model.embedding.weight"):
        convert(ckpt, tmp_path / "a", config=config)
    ckpt, config, _ = original_file("cin256-v2", tmp_path, reference=references["cin256-v2"],
                                    state_edit=lambda s: s.pop("cond_stage_model.embedding.weight"))
    with pytest.raises(CheckpointError, match="lacks cond_stage_model.embedding.weight"):
        convert(ckpt, tmp_path / "b", config=config)
    ckpt, config, _ = original_file("churches", tmp_path, reference=references["churches"],
                                    state_edit=lambda s: s.pop("scale_factor"))
    with pytest.raises(CheckpointError, match="scale_by_std"):
        convert(ckpt, tmp_path / "c", config=config)
    ckpt, config, _ = original_file("celebahq", tmp_path, reference=references["celebahq"],
                                    yaml_edit=lambda p: p.update(linear_end=0.012))
    with pytest.raises(ConfigError, match="alphas_cumprod differs"):
        convert(ckpt, tmp_path / "d", config=config)
    assert not any((tmp_path / n).exists() for n in "abcd")
