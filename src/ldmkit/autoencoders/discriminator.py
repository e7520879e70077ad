"""PatchGAN discriminator (pix2pix, Isola et al. 2017; as used by taming-transformers and LDM's first stage).

Each output logit judges one overlapping patch of the input: with ``n_layers = 3`` the receptive field is
70×70 pixels. The normalisation is a choice:

- ``"group"`` (default): GroupNorm. Has no running statistics and no cross-sample coupling, so it behaves
  the same in training and evaluation and under DistributedDataParallel without ``SyncBatchNorm``; real
  and fake batches (passed separately) do not leak statistics into each other.
- ``"batch"``: BatchNorm, the original pix2pix/taming layout. Under DDP convert it with
  ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` or each process normalises with its own batch and
  the running statistics differ between processes.
"""

from __future__ import annotations

import torch
from torch import nn

from ldmkit.nn.norm import group_norm


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return group_norm(channels, 32, eps=1e-5)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown discriminator norm '{kind}'")


class NLayerDiscriminator(nn.Module):
    """x [B, C, H, W] → patch logits [B, 1, h', w'].

    Args:
        in_channels: image channels.
        channels: width of the first layer (doubled per layer, capped at 8×).
        n_layers: number of stride-2 convolutions (H must be at least about 2^(n_layers + 2)).
        norm: ``"group"`` or ``"batch"`` (see the module docstring).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3, norm: str = "group"):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride=stride, padding=1, bias=False),
                _norm(norm, channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Convolutions ~ N(0, 0.02), norm scales ~ N(1, 0.02), norm shifts 0 (the DCGAN/pix2pix init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)  # [B, 1, h', w']

    @staticmethod
    def output_side(side: int, n_layers: int) -> int:
        """The side of the logit map for an input side: each stride-2 convolution (4x4, padding 1) halves it,
        each stride-1 one (the last two) takes one away. Below 1 the network cannot run."""
        for _ in range(n_layers):  # the first convolution and n_layers - 1 strided ones
            side //= 2
        return side - 2
