"""LPIPS perceptual distance (Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of
Deep Features as a Perceptual Metric", CVPR 2018), version 0.1 (linear heads on VGG16 or AlexNet).

Eq. 1 of the paper: with ``ŷ^l`` the unit-normalised (over channels) activations of layer ``l`` and
``w_l`` the learnt non-negative channel weights (the "linear heads"),

    d(x, y) = Σ_l 1 / (H_l W_l) Σ_{h,w} || w_l ⊙ (ŷ^l_hw(x) − ŷ^l_hw(y)) ||²₂

The backbones are built here (no torchvision import) with the same layer indices as torchvision's
``features`` so that torchvision / ldmkit weight files load by key. The latent-diffusion first stage
(paper §3.1, appendix G) trains its autoencoder with this loss on VGG16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn

from ldmkit.errors import CheckpointError, ConfigError, DataError
from ldmkit.io.model_dir import load_state_strict

LPIPSNet = Literal["vgg16", "alex"]

# Canonical name and accepted spellings; the canonical name of "alex" files is "alexnet".
_NET_ALIASES = {"vgg16": "vgg16", "vgg": "vgg16", "alex": "alex", "alexnet": "alex"}
_ASSET_FILES = {"vgg16": "vgg16.safetensors", "alex": "alexnet.safetensors"}

# The LPIPS input scaling (the ImageNet mean / std, expressed for inputs in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> tuple[nn.Sequential, tuple[int, ...]]:
    """torchvision's ``vgg16().features`` up to relu5_3; taps after relu1_2, 2_2, 3_3, 4_3, 5_3."""
    layers: list[nn.Module] = []
    channels = 3
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers), (3, 8, 15, 22, 29)


def _alexnet_features() -> tuple[nn.Sequential, tuple[int, ...]]:
    """torchvision's ``alexnet().features`` up to relu5; taps after relu1 … relu5."""
    layers = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),    # 0, 1
        nn.MaxPool2d(kernel_size=3, stride=2),                                # 2
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),             # 3, 4
        nn.MaxPool2d(kernel_size=3, stride=2),                                # 5
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),            # 6, 7
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),            # 8, 9
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),            # 10, 11
    )
    return layers, (1, 4, 7, 9, 11)


# Smallest input side for which every tapped layer is at least 1x1.
_MIN_SIDE = {"vgg16": 16, "alex": 32}


def _unit_normalise(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide each spatial position's channel vector by its L2 norm (Eq. 1's ŷ). [B, C, h, w] → same."""
    features = features.to(torch.promote_types(features.dtype, torch.float32))
    norm = features.pow(2).sum(dim=1, keepdim=True).sqrt()  # [B, 1, h, w]
    return features / (norm + eps)


def canonical_net(net: str) -> str:
    try:
        return _NET_ALIASES[net]
    except KeyError:
        raise ConfigError(f"LPIPS network '{net}' is not known; use vgg16 or alex") from None


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between image batches in [-1, 1]; frozen, but differentiable in its inputs.

    ``LPIPS(net)`` has random weights (backbone: torch's default init; heads: non-negative uniform);
    :meth:`from_assets` loads the published weights from the ``lpips`` asset.
    """

    def __init__(self, net: LPIPSNet | str = "vgg16") -> None:
        super().__init__()
        self.net = canonical_net(net)
        self.features, self.taps = _vgg16_features() if self.net == "vgg16" else _alexnet_features()
        widths = [self.features[i - 1].out_channels for i in self.taps]  # the conv before each tapped ReLU
        for k, width in enumerate(widths):
            head = nn.Conv2d(width, 1, kernel_size=1, bias=False)  # weight [1, C_k, 1, 1]
            nn.init.uniform_(head.weight, 0.0, 2.0 / width)
            self.add_module(f"lin{k}", head)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Always stays in evaluation mode (it is a fixed metric), whatever a parent module asks."""
        return super().train(False)

    @property
    def heads(self) -> list[nn.Conv2d]:
        return [getattr(self, f"lin{k}") for k in range(len(self.taps))]

    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped activations of ``x`` (in [-1, 1]), after the LPIPS input scaling."""
        h = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)  # [B, 3, H, W]
        taps = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                taps.append(h)  # [B, C_k, H_k, W_k]
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d(x, y) for each pair: x, y [B, 3, H, W] in [-1, 1] → [B]."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise DataError(f"LPIPS compares two [B, 3, H, W] batches of one shape; got {tuple(x.shape)} "
                            f"and {tuple(y.shape)}")
        if min(x.shape[-2:]) < _MIN_SIDE[self.net]:
            raise DataError(f"LPIPS-{self.net} needs images of at least {_MIN_SIDE[self.net]} px a side; "
                            f"got {tuple(x.shape[-2:])}: upsample them first")
        batch = x.shape[0]
        taps = self.layer_features(torch.cat([x, y]))  # one pass for both batches
        total = x.new_zeros(batch, dtype=torch.promote_types(x.dtype, torch.float32))
        for head, feats in zip(self.heads, taps):
            fx, fy = _unit_normalise(feats[:batch]), _unit_normalise(feats[batch:])  # [B, C_k, h, w]
            weighted = head((fx - fy).pow(2).to(head.weight.dtype))  # [B, 1, h, w]
            total = total + weighted.mean(dim=(1, 2, 3)).to(total.dtype)  # spatial average
        return total

    # --- weights -----------------------------------------------------------------------------------

    @classmethod
    def from_assets(cls, net: LPIPSNet | str = "vgg16") -> LPIPS:
        """The published LPIPS v0.1 weights from the ``lpips`` asset (``ldm assets fetch lpips``)."""
        from ldmkit.assets import require

        model = cls(net)
        path = require("lpips") / _ASSET_FILES[model.net]
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds
            raise CheckpointError(f"{path} cannot be read ({exc}); run: ldm assets fetch lpips --force") from None
        load_state_strict(model, state, str(path))
        return model

    @classmethod
    def from_files(cls, net: LPIPSNet | str, backbone: str | Path, heads: str | Path) -> LPIPS:
        """Original weight files: a torchvision VGG16 / AlexNet checkpoint (``vgg16-397923af.pth``,
        ``alexnet-owt-7be5be79.pth``) and the ``lpips`` package's ``weights/v0.1/<net>.pth``.
        ``.safetensors`` files work too. Pickled files are read with ``weights_only=True``."""
        from ldmkit.assets.convert import backbone_features, lpips_original_heads

        model = cls(net)
        state = {**backbone_features(_read_state(backbone)), **lpips_original_heads(_read_state(heads))}
        load_state_strict(model, state, f"{backbone} + {heads}")
        return model


def _read_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch / safetensors raise several kinds
        raise CheckpointError(f"{path} cannot be read as a state dict ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state
