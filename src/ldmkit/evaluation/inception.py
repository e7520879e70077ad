"""The Inception-v3 network of standard FID (Heusel et al. 2017), ported from the TensorFlow graph of 2015-12-05.

Standard FID numbers need this exact network and its input pipeline: 8-bit images, bilinear resizing
to 299 × 299 as TensorFlow 1.x computes it (no half-pixel centres, no antialiasing), scaling as
(x − 128) / 128, and the 2048-d ``pool3`` features. The weights cannot be fetched offline: the user
passes the standard file (``pt_inception-2015-12-05-6726825d.pth`` of pytorch-fid, identical to
torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``) or has it in the torch hub cache.
Only with that file are the metrics labelled FID / KID / IS.

The TF graph differs from torchvision's Inception-v3 in three places (kept here): average pools in the
A, C and E blocks exclude padding from the mean, the last E block pools with a max instead of an average,
and the classifier has 1008 outputs. torch-fidelity and torchmetrics implement the same network but need
torchvision at import time, which this project does not depend on; hence this port (module names follow
the weights file, which loads strictly).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.errors import AssetMissingError, CheckpointError
from ldmkit.evaluation.extractor import FEATURE_EXTRACTORS, to_uint8_levels
from ldmkit.evaluation.weights import read_state_dict
from ldmkit.io.model_dir import load_state_strict, sha256_file

WEIGHT_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_SHA256_PREFIX = "6726825d"
FID_RESOLUTION = 299


class BasicConv2d(nn.Module):
    """Conv (no bias) → BN (eps 1e-3) → ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # The TF graph averages over the valid (unpadded) pixels only.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_ch: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([a, b, c, d], 1)  # [B, 224 + pool_features, H, W]


class InceptionB(nn.Module):
    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], 1)  # [B, 480 + C_in, H', W']


class InceptionC(nn.Module):
    def __init__(self, in_ch: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([a, b, c, d], 1)  # [B, 768, H, W]


class InceptionD(nn.Module):
    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([a, b, c], 1)  # [B, 512 + C_in, H', W']


class InceptionE(nn.Module):
    def __init__(self, in_ch: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the last block of the TF graph pools with a max
        self.branch1x1 = BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        d = self.branch_pool(pooled)
        return torch.cat([a, b, c, d], 1)  # [B, 2048, H, W]


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the FID TF graph; :meth:`forward` takes the preprocessed [B, 3, 299, 299] input."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """→ pool3 features [B, 2048] and the bias-free logits [B, 1008] of the Inception Score."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 64, 147, 147]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [B, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [B, 192, 71, 71]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [B, 192, 35, 35]
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ... → [B, 2048, 8, 8]
        pool3 = x.mean(dim=(2, 3))  # [B, 2048]
        # The Inception Score of Salimans et al. uses the softmax weights without the bias.
        return pool3, pool3 @ self.fc.weight.T  # [B, 2048], [B, 1008]


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x ``tf.image.resize_bilinear(align_corners=False)``.

    Source coordinate = output index × (in / out), without half-pixel centres; rows are interpolated along
    the width first, then along the height, as TF does.
    """
    in_h, in_w = x.shape[-2:]
    out_h, out_w = size

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / n_out, dtype=torch.float32)
        src = torch.arange(n_out, dtype=torch.float32) * scale
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo.to(x.device), hi.to(x.device), (src - lo.float()).to(x.device, x.dtype)

    y0, y1, wy = axis(in_h, out_h)
    x0, x1, wx = axis(in_w, out_w)
    top = x[..., y0, :]  # [B, C, out_h, in_w]
    bottom = x[..., y1, :]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * wx  # [B, C, out_h, out_w]
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * wx
    return top + (bottom - top) * wy[:, None]  # [B, C, out_h, out_w]


def preprocess_fid(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] → [B, 3, 299, 299]: 8-bit levels, TF-1.x bilinear resize, (x − 128) / 128."""
    x = to_uint8_levels(images)  # [B, 3, H, W] in {0..255}
    if x.shape[-2:] != (FID_RESOLUTION, FID_RESOLUTION):
        x = resize_bilinear_tf1(x, (FID_RESOLUTION, FID_RESOLUTION))
    return (x - 128) / 128


class InceptionFeatures:
    """Feature extractor ``inception``: pool3 features of the standard FID network."""

    name = "inception"
    resolution = FID_RESOLUTION
    dim = 2048
    label = "Inception"
    protocol = ("inception-v3 fid tf-2015-12-05 (6726825d) pool3-2048 | 8-bit quantised | "
                "resize 299x299 bilinear tensorflow-1.x | (x-128)/128")

    def __init__(self, network: FIDInceptionV3, device: torch.device | str = "cpu"):
        self.network = network.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)

    @torch.inference_mode()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] in [-1, 1] → pool3 [B, 2048], Inception-Score logits [B, 1008] (float32)."""
        pool3, logits = self.network(preprocess_fid(images.to(self.device)))
        return pool3.float(), logits.float()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]


def find_inception_weights(user_path: str | Path | None = None) -> Path:
    """The standard FID weights: ``user_path``, else a known file name in the torch hub cache."""
    if user_path is not None:
        path = Path(user_path)
        if path.is_dir():
            found = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
            if not found:
                raise CheckpointError(f"{path} holds none of {', '.join(WEIGHT_FILES)}")
            path = found[0]
        if not path.is_file():
            raise CheckpointError(f"Inception weights file {path} does not exist")
        return path
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in WEIGHT_FILES:
        if (hub / name).is_file():
            return hub / name
    raise AssetMissingError(
        f"standard FID needs the Inception weights {WEIGHT_FILES[0]} (pytorch-fid) or {WEIGHT_FILES[1]} "
        f"(torch-fidelity), which cannot be fetched offline: pass --feature-weights PATH or put the file in {hub}; "
        "or use --feature efflite0"
    )


def load_fid_inception(weights: str | Path, check_hash: bool = True) -> FIDInceptionV3:
    """The FID network with ``weights`` loaded strictly; ``.pth`` files must be the standard file (SHA-256 prefix)."""
    weights = Path(weights)
    if check_hash and weights.suffix != ".safetensors":
        digest = sha256_file(weights)
        if not digest.startswith(WEIGHTS_SHA256_PREFIX):
            raise CheckpointError(
                f"{weights} is not the standard FID Inception weights file (SHA-256 {digest[:8]}…, "
                f"expected {WEIGHTS_SHA256_PREFIX}…); FID is defined only with that file"
            )
    state = dict(read_state_dict(weights))
    network = FIDInceptionV3()
    # Batch-norm step counters are bookkeeping unused at inference; older files do not carry them.
    for key, value in network.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    load_state_strict(network, state, str(weights))
    return network.eval()


@FEATURE_EXTRACTORS.register("inception")
def build_inception(*, device: torch.device | str = "cpu", weights: str | Path | None = None) -> InceptionFeatures:
    """The ``inception`` extractor (standard FID); needs the user's standard weights file, see the module doc."""
    path = find_inception_weights(weights if weights is not None else os.environ.get("LDMKIT_INCEPTION_WEIGHTS"))
    return InceptionFeatures(load_fid_inception(path), device=device)
