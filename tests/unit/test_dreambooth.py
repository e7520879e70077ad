"""DreamBooth on a tiny text model: the instance prompt's loss on the instance images falls, and the class images
of prior preservation are made by the model once, before training, and read back when the run resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldmkit.config import load_config
from ldmkit.data import build_dataset
from ldmkit.diffusion.losses import diffusion_loss
from ldmkit.errors import ConfigError
from ldmkit.model import LatentDiffusionModel
from ldmkit.training import dreambooth
from ldmkit.training.diffusion_task import DiffusionExperiment, run_diffusion_training
from tests.unit.test_training_init_from import DM_FAST, train_ae, train_dm

INSTANCE, CLASS = "a photo of sks circle", "a red circle"
DREAMBOOTH = [f"dreambooth.instance_prompt={INSTANCE}", f"dreambooth.class_prompt={CLASS}",
              "dreambooth.num_class_images=3", "dreambooth.steps=2", "dreambooth.batch_size=2",
              "dreambooth.prior_loss_weight=0.5", "data.synthetic.count=4", "ema_decay=0", "train.lr=3e-3",
              "train.warmup_steps=0", "train.checkpoint_every=4"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("db")
    _, autoencoder = train_ae(root / "ae")
    _, model = train_dm(root / "dm", autoencoder)
    return autoencoder, model


def run(out: Path, autoencoder: Path, model: Path, steps: int) -> Path:
    return run_diffusion_training("synthetic-text", [*DM_FAST, f"autoencoder={autoencoder}", f"train.out={out}",
                                                     f"train.init_from={model}", *DREAMBOOTH, f"train.steps={steps}"])


def instance_loss(model_dir: Path, autoencoder: Path) -> float:
    """The instance prompt's denoising loss on the instance images, at fixed noise and timesteps."""
    experiment = load_config(DiffusionExperiment, "synthetic-text",
                             [*DM_FAST, f"autoencoder={autoencoder}", *DREAMBOOTH], group="diffusion")
    images = torch.stack([build_dataset(experiment.data, split="train")[i]["image"] for i in range(4)])
    model = LatentDiffusionModel.load(model_dir)
    with torch.no_grad():
        z0 = model.autoencoder.encode_distribution(images).mean.repeat(8, 1, 1, 1)
        cond = model.conditioner.eval().encode_prompts([INSTANCE] * z0.shape[0])
        loss, _ = diffusion_loss(model.unet.eval(), z0, cond, model.schedule,
                                 generator=torch.Generator().manual_seed(0))
    return loss.item()


def test_instance_loss_falls_and_class_images_are_made_once(base, tmp_path, monkeypatch):
    autoencoder, model = base
    made = []
    original = dreambooth._make
    monkeypatch.setattr(dreambooth, "_make", lambda *a: made.append(1) or original(*a))
    out = tmp_path / "db"
    run(out, autoencoder, model, steps=4)
    assert made == [1]
    pngs = sorted((out / dreambooth.CLASS_DIR).glob("*.png"))
    assert len(pngs) == 3
    stamp = (out / dreambooth.CLASS_DIR / "latents.safetensors").stat().st_mtime_ns
    written = run(out, autoencoder, model, steps=12)  # resumes at step 4 and reuses the class images
    assert made == [1]
    assert (out / dreambooth.CLASS_DIR / "latents.safetensors").stat().st_mtime_ns == stamp
    assert instance_loss(written, autoencoder) < 0.9 * instance_loss(model, autoencoder)


def test_dreambooth_refusals(base, tmp_path):
    autoencoder, model = base
    with pytest.raises(ConfigError, match="needs dreambooth.instance_prompt"):
        load_config(DiffusionExperiment, "synthetic-text", [*DM_FAST, f"autoencoder={autoencoder}",
                                                            "dreambooth.class_prompt=a dog"], group="diffusion")
    out = tmp_path / "db"
    run(out, autoencoder, model, steps=1)
    with pytest.raises(ConfigError, match="another dreambooth class_prompt"):
        run_diffusion_training("synthetic-text", [*DM_FAST, f"autoencoder={autoencoder}", f"train.out={out}",
                                                  *DREAMBOOTH, "dreambooth.class_prompt=a blue square",
                                                  "train.steps=2"])
