"""DreamBooth (Ruiz et al. 2023): teach a text model a concept from a few images and a prompt with a rare token
("a photo of sks dog"), optionally with prior preservation.

Every instance image trains under ``dreambooth.instance_prompt``. With a ``class_prompt`` the model first makes
``num_class_images`` images of the class ("a photo of a dog") itself, before any training step, and each step adds
``prior_loss_weight`` × the loss on as many of them under the class prompt, so the class keeps what it meant
(the paper's prior-preservation loss, eq. 2). The class images are made once: they are kept in the run directory
(``class_images/``: PNGs, and their latents for training), and a resumed run reads them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset, IterableDataset

from ldmkit.config import option
from ldmkit.errors import ConfigError
from ldmkit.runtime import is_main_process

CLASS_DIR = "class_images"
_LATENTS, _RECORD = "latents.safetensors", "record.json"


@dataclass(frozen=True)
class DreamBoothConfig:
    """The ``dreambooth:`` section of a diffusion experiment (text models)."""

    instance_prompt: str = option("", help="prompt every training image gets, with a rare token, e.g. 'a photo of "
                                           "sks dog' (empty: no DreamBooth; the data's own captions)")
    class_prompt: str = option("", help="prompt of the class, e.g. 'a photo of a dog' (empty: no prior "
                                        "preservation)")
    num_class_images: int = option(50, help="class images the model makes before training", min=1)
    prior_loss_weight: float = option(1.0, help="weight of the class images' loss", min=0.0)
    sampler: str = option("dpm++2m", help="sampler of the class images")
    steps: int = option(25, help="sampling steps of the class images", min=1)
    guidance: float = option(3.0, help="classifier-free guidance of the class images", min=0.0)
    batch_size: int = option(8, help="class images made per batch", min=1)
    seed: int = option(0, help="noise seed of the first class image", min=0)

    @property
    def enabled(self) -> bool:
        return bool(self.instance_prompt)

    @property
    def prior(self) -> bool:
        return self.enabled and bool(self.class_prompt)

    def check(self, takes_text: bool) -> None:
        if self.class_prompt and not self.instance_prompt:
            raise ConfigError("dreambooth.class_prompt needs dreambooth.instance_prompt (the prompt of your images)")
        if self.enabled and not takes_text:
            raise ConfigError("dreambooth needs a text model (conditioner.kind text, pretrained_text or clip_text); "
                              "this conditioner takes no prompt")


class InstanceCaptions(Dataset):
    """The instance images, each captioned with the instance prompt."""

    def __init__(self, dataset: Any, prompt: str):
        if isinstance(dataset, IterableDataset):
            raise ConfigError("dreambooth trains on a few images: give them as a folder or a latent cache, not as "
                              "streamed shards")
        self.dataset, self.prompt = dataset, prompt

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "caption": self.prompt}

    def __getattr__(self, name: str) -> Any:  # index, captions, … of the wrapped data set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ClassImages:
    """The class images' latents [N, c, h, w] (scaled, as training sees latents), made once per run directory."""

    def __init__(self, latents: torch.Tensor, prompt: str):
        self.latents, self.prompt = latents, prompt

    @classmethod
    def made_or_read(cls, run_dir: Path, config: DreamBoothConfig, pipeline_of, autoencoder) -> "ClassImages":
        """Read ``run_dir/class_images`` when it holds this config's class images; else make and write them."""
        folder = run_dir / CLASS_DIR
        record = {"prompt": config.class_prompt, "count": config.num_class_images, "seed": config.seed}
        if (folder / _RECORD).is_file() and json.loads((folder / _RECORD).read_text()) == record:
            return cls(load_file(str(folder / _LATENTS))["latents"], config.class_prompt)
        if (folder / _RECORD).is_file():
            raise ConfigError(f"{folder} holds class images of another dreambooth class_prompt / num_class_images / "
                              "seed; delete that folder or use a new train.out")
        if not is_main_process():
            raise ConfigError("make the class images in one process first (the same command without torchrun), "
                              "then resume under torchrun")
        latents = _make(folder, config, pipeline_of(), autoencoder)
        save_file({"latents": latents.contiguous()}, str(folder / _LATENTS))
        (folder / _RECORD).write_text(json.dumps(record))  # last: its presence means the latents are complete
        return cls(latents, config.class_prompt)

    def batch(self, step: int, size: int, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        """``size`` class latents for ``step`` (cycling through them in order) and their captions."""
        index = (step * size + torch.arange(size)) % self.latents.shape[0]
        return self.latents[index].to(device), {"caption": [self.prompt] * size}


@torch.no_grad()
def _make(folder: Path, config: DreamBoothConfig, pipe, autoencoder) -> torch.Tensor:
    from ldmkit.io.images import to_pil, to_unit

    folder.mkdir(parents=True, exist_ok=True)
    print(f"making {config.num_class_images} class images of '{config.class_prompt}' in {folder}")
    latents = []
    for start in range(0, config.num_class_images, config.batch_size):
        n = min(config.batch_size, config.num_class_images - start)
        images = pipe([config.class_prompt] * n, sampler=config.sampler, steps=config.steps, guidance=config.guidance,
                      seed=config.seed + start, output="tensor", progress=False)  # [n, 3, H, W] in [-1, 1]
        for k, image in enumerate(images):
            to_pil(to_unit(image)).save(folder / f"{start + k:05d}.png")
        latents.append(autoencoder.encode_distribution(images.to(autoencoder_device(autoencoder))).mean.cpu())
    return torch.cat(latents).float()


def autoencoder_device(autoencoder) -> torch.device:
    return next(autoencoder.parameters()).device


__all__ = ["CLASS_DIR", "ClassImages", "DreamBoothConfig", "InstanceCaptions"]
