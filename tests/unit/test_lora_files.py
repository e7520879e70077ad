"""LoRA files: an adapter ldmkit writes is read by diffusers' own loader with the same result, and a kohya-layout
file (as kohya sd-scripts names its tensors) lands in ldmkit as W + scale·(alpha/rank)·up·down."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from ldmkit.adapters import kohya_path, read_adapter, save_adapter  # noqa: E402
from ldmkit.adapters.peft_layers import activate, add_layers, read_factors, remove_layers, set_factors  # noqa: E402
from ldmkit.adapters.targets import backbone_targets  # noqa: E402
from ldmkit.conditioning.types import Conditioning  # noqa: E402
from ldmkit.denoisers.unet import UNet  # noqa: E402
from ldmkit.errors import CheckpointError  # noqa: E402
from ldmkit.interop.diffusers_config import unet_from_diffusers  # noqa: E402
from ldmkit.interop.keys_unet import unet_rules  # noqa: E402
from ldmkit.interop.mapping import import_tensors  # noqa: E402

TINY = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2)
GROUPS = ("attention", "feedforward", "projections", "convolutions")


def pair(**overrides) -> tuple[UNet2DConditionModel, UNet]:
    """A random diffusers UNet and the ldmkit UNet holding the same weights (through ldmkit.interop)."""
    torch.manual_seed(0)
    theirs = UNet2DConditionModel(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.2)
    config = unet_from_diffusers(dict(theirs.config))
    ours = UNet(config).eval()
    ours.load_state_dict(import_tensors(unet_rules(config, "diffusers"), theirs.state_dict(), "unet"), strict=True)
    return theirs, ours


def inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 700]), torch.randn(2, 5, 8, generator=gen)


def random_adapter(unet: UNet, rank: int = 3, alpha: float = 1.5) -> None:
    """Adapter "trained" on every group: peft's A and a random B (peft starts B at zero)."""
    add_layers(unet, {n: (rank, alpha) for n in backbone_targets(unet, GROUPS)}, "trained")
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    activate(unet, {"trained": 1.0})


@pytest.mark.parametrize("linear", [False, True])
def test_diffusers_loads_what_ldmkit_writes(tmp_path, linear):
    theirs, ours = pair(use_linear_projection=linear)
    random_adapter(ours)
    path = save_adapter(tmp_path / "a.safetensors", {"unet": read_factors(ours, "trained")}, {"unet": ours})[0]
    x, t, context = inputs()
    with torch.no_grad():
        base = theirs(x, t, context).sample
        theirs.load_lora_adapter(str(path), prefix="unet", adapter_name="a")
        got = theirs(x, t, context).sample
        want = ours(x, t, Conditioning(context=context))
    assert (want - base).abs().max() > 1e-2  # the adapter changes the output …
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # … the same way in both


def test_diffusers_reads_the_kohya_twin(tmp_path):
    from diffusers import StableDiffusionPipeline

    theirs, ours = pair()
    random_adapter(ours)
    path = save_adapter(tmp_path / "a.safetensors", {"unet": read_factors(ours, "trained")}, {"unet": ours})[0]
    state, alphas = StableDiffusionPipeline.lora_state_dict(str(kohya_path(path)))[:2]
    assert alphas and all(k.startswith("unet.") for k in state)  # diffusers took it for a kohya file
    theirs.load_lora_adapter(state, network_alphas=alphas, prefix="unet", adapter_name="k")
    x, t, context = inputs()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t, context).sample, ours(x, t, Conditioning(context=context)),
                                   rtol=1e-5, atol=1e-5)


def kohya_file(theirs: UNet2DConditionModel, path, rank: int = 2, alpha: float = 1.0) -> dict:
    """Random LoRA tensors in kohya sd-scripts' naming: every Linear / Conv2d inside a Transformer2DModel, and the
    convolutions of ResnetBlock2D / Down- / Upsample2D, as lora_unet_<diffusers path with _>.lora_down/up/alpha."""
    gen = torch.Generator().manual_seed(3)
    state, layers = {}, {}
    for name, block in theirs.named_modules():
        if type(block).__name__ not in ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"):
            continue
        for child, m in block.named_modules():
            if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            stem = f"lora_unet_{name}.{child}".replace(".", "_")
            if isinstance(m, torch.nn.Conv2d):
                down = torch.randn(rank, m.in_channels, *m.kernel_size, generator=gen) * 0.3
                up = torch.randn(m.out_channels, rank, 1, 1, generator=gen) * 0.3
            else:
                down = torch.randn(rank, m.in_features, generator=gen) * 0.3
                up = torch.randn(m.out_features, rank, generator=gen) * 0.3
            state.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
                          f"{stem}.alpha": torch.tensor(alpha)})
            layers[f"{name}.{child}"] = (down, up)
    save_file(state, str(path))
    return layers


def merged_by_hand(theirs: UNet2DConditionModel, layers: dict, scale: float, rank: int, alpha: float) -> dict:
    """The diffusers state with W + scale·(alpha/rank)·up·down on every adapted layer (kohya's merge)."""
    state = {k: v.clone() for k, v in theirs.state_dict().items()}
    for name, (down, up) in layers.items():
        w = state[f"{name}.weight"]
        delta = (up.flatten(1) @ down.flatten(1)) if down.ndim == 2 or down.shape[2:] == (1, 1) else \
            torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        state[f"{name}.weight"] = w + scale * alpha / rank * delta.reshape(w.shape)
    return state


@pytest.mark.parametrize("linear", [False, True])
def test_kohya_file_lands_as_the_merged_weights(tmp_path, linear):
    theirs, ours = pair(use_linear_projection=linear)
    rank, alpha, scale = 2, 1.0, 0.7
    layers = kohya_file(theirs, tmp_path / "k.safetensors", rank, alpha)
    adapter = read_adapter(tmp_path / "k.safetensors", {"unet": ours})
    set_factors(ours, adapter["unet"], "k")
    activate(ours, {"k": scale})
    x, t, context = inputs()
    with torch.no_grad():
        adapted = ours(x, t, Conditioning(context=context))
    remove_layers(ours, merge=True)
    want = import_tensors(unet_rules(ours.config, "diffusers"), merged_by_hand(theirs, layers, scale, rank, alpha),
                          "unet")
    got = ours.state_dict()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)
    reference = UNet(ours.config).eval()
    reference.load_state_dict(want)
    with torch.no_grad():
        torch.testing.assert_close(adapted, reference(x, t, Conditioning(context=context)), rtol=1e-5, atol=1e-5)
    # and back out: ldmkit's kohya twin of the joined adapter merges to the same weights in diffusers' names
    assert len(layers) > 20


def test_an_adapter_for_another_architecture_is_refused(tmp_path):
    theirs, _ = pair()
    kohya_file(theirs, tmp_path / "k.safetensors")
    _, other = pair(block_out_channels=(8, 16), norm_num_groups=4)
    with pytest.raises(CheckpointError, match="another architecture"):
        read_adapter(tmp_path / "k.safetensors", {"unet": other})
    save_file({"lora_unet_nowhere_to_q.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_nowhere_to_q.lora_up.weight": torch.zeros(4, 2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="does not have"):
        read_adapter(tmp_path / "x.safetensors", {"unet": other})
    save_file({"a": torch.zeros(2)}, str(tmp_path / "y.safetensors"))
    with pytest.raises(CheckpointError, match="no LoRA file"):
        read_adapter(tmp_path / "y.safetensors", {"unet": other})
