"""LoRA training (``lora:`` in a diffusion config): started from a model (train.init_from), only the adapters'
A and B train; the run writes the untouched base model and the adapter files beside it, which load back onto the
model and give what the trained networks gave."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")

from ldmkit.adapters import kohya_path, load_lora, merge_loras, unload_loras  # noqa: E402
from ldmkit.errors import ConfigError  # noqa: E402
from ldmkit.model import LatentDiffusionModel  # noqa: E402
from tests.unit.test_training_init_from import optimiser_entries, train_ae, train_dm  # noqa: E402

LORA = ["lora.rank=2", "lora.alpha=4", "lora.targets=[attention,feedforward,text_encoder]", "ema_decay=0",
        "train.steps=3", "train.checkpoint_every=3", "train.lr=3e-2", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora")
    _, autoencoder = train_ae(root / "ae")
    _, model = train_dm(root / "dm", autoencoder)
    return autoencoder, model


@pytest.fixture(scope="module")
def adapted(base, tmp_path_factory):
    autoencoder, model = base
    out = tmp_path_factory.mktemp("run") / "lora"
    task, written = train_dm(out, autoencoder, f"train.init_from={model}", *LORA)
    return task, written, out


def probe(model: LatentDiffusionModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, model.unet.config.in_channels, 4, 4, generator=gen)
    with torch.no_grad():
        cond = model.conditioner.eval().encode_prompts(["a red circle", "a blue square"])
        return model.unet.eval()(x, torch.tensor([100, 600]), cond)


def test_only_the_adapters_train_and_the_base_is_written_untouched(base, adapted):
    _, model = base
    task, written, out = adapted
    for part in ("unet", "conditioner"):
        before, after = load_file(str(model / f"{part}.safetensors")), load_file(str(written / f"{part}.safetensors"))
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    trainable = [n for n, p in task.trained.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert any(n.startswith("conditioner.") for n in trainable)  # text targets adapt the text encoder too
    held, with_state = optimiser_entries(out, "model")
    assert held == with_state == len(trainable)
    files = {p.name for p in (written / "adapters").iterdir()}
    assert files == {"lora.safetensors", "lora.kohya.safetensors"}
    keys = load_file(str(written / "adapters" / "lora.safetensors"))
    assert any(k.startswith("unet.") and k.endswith(".lora_A.weight") for k in keys)
    assert any(k.startswith("text_encoder.") for k in keys)
    kohya = load_file(str(kohya_path(written / "adapters" / "lora.safetensors")))
    assert any(k.startswith("lora_unet_") and k.endswith(".alpha") for k in kohya)


def test_the_adapter_file_gives_back_the_trained_networks(adapted):
    task, written, _ = adapted
    trained = probe(task.model())
    model = LatentDiffusionModel.load(written)
    plain = probe(model)
    name = load_lora(model, written / "adapters" / "lora.safetensors")
    assert name == "lora"
    torch.testing.assert_close(probe(model), trained, rtol=1e-5, atol=1e-6)
    assert (trained - plain).abs().max() > 1e-3 * plain.abs().max()  # the adapter moved the output
    half = LatentDiffusionModel.load(written)
    load_lora(half, kohya_path(written / "adapters" / "lora.safetensors"), scale=0.5)  # the kohya twin, at ½
    torch.testing.assert_close(probe(half) - plain, 0.5 * (trained - plain), rtol=0.2, atol=1e-6)  # ≈ linear in scale
    merge_loras(model)
    assert not any("lora" in n for n, _ in model.unet.named_parameters())
    torch.testing.assert_close(probe(model), trained, rtol=1e-5, atol=1e-5)
    unload_loras(half)
    torch.testing.assert_close(probe(half), plain)


def test_lora_with_a_trainable_part_is_refused(base, tmp_path):
    autoencoder, model = base
    with pytest.raises(ConfigError, match="adapters alone train"):
        train_dm(tmp_path / "x", autoencoder, f"train.init_from={model}", *LORA, "train.trainable=unet")
    with pytest.raises(ConfigError, match="lora.targets: unknown group"):
        train_dm(tmp_path / "y", autoencoder, "lora.rank=2", "lora.targets=[attn]")


def test_ldm_sample_with_several_adapters_and_ldm_lora_merge(adapted, tmp_path, capsys):
    import json

    from ldmkit.cli.main import main as ldm

    task, written, _ = adapted
    file = written / "adapters" / "lora.safetensors"
    args = ["sample", "--model", str(written), "--prompt", "a red circle", "--n", "1", "--steps", "2",
            "--device", "cpu"]
    assert ldm([*args, "--lora", f"{file}:0.5", "--lora", f"{kohya_path(file)}:0.5", "--out", str(tmp_path / "s")]) == 0
    record = json.loads((tmp_path / "s" / "settings.json").read_text())
    assert [x["scale"] for x in record["lora"]] == [0.5, 0.5]
    assert ldm(["lora", "merge", "--model", str(written), "--lora", str(file), "--out", str(tmp_path / "m")]) == 0
    merged = LatentDiffusionModel.load(tmp_path / "m")
    torch.testing.assert_close(probe(merged), probe(task.model()), rtol=1e-5, atol=1e-5)
    assert not (tmp_path / "m" / "adapters").exists()
    capsys.readouterr()
    assert ldm([*args, "--lora", f"{file}:nan", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a finite number" in err and "\n" not in err
    assert ldm([*args, "--lora", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "bad")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_conditioner_learns_the_conditioner_in_full_beside_a_unet_adapter(base, tmp_path):
    """Pivotal tuning: the conditioner's weights (new class or token embeddings) train with the UNet's adapters;
    the base written beside the adapter carries that conditioner, the UNet stays the original."""
    autoencoder, model = base
    task, written = train_dm(tmp_path / "pivotal", autoencoder, f"train.init_from={model}", *LORA,
                             "lora.targets=[attention]", "lora.train_conditioner=true")
    trainable = [n for n, p in task.trained.named_parameters() if p.requires_grad]
    assert all(".lora_" in n for n in trainable if n.startswith("unet."))
    assert any(n.startswith("conditioner.") and ".lora_" not in n for n in trainable)
    before, after = (load_file(str(d / "conditioner.safetensors")) for d in (model, written))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the conditioner learned
    unet_before, unet_after = (load_file(str(d / "unet.safetensors")) for d in (model, written))
    assert all(torch.equal(unet_before[k], unet_after[k]) for k in unet_before)  # the UNet learned only through LoRA
    again = LatentDiffusionModel.load(written)
    load_lora(again, written / "adapters" / "lora.safetensors")
    torch.testing.assert_close(probe(again), probe(task.model()), rtol=1e-5, atol=1e-6)
