"""Low-precision GEMMs for sampling: the transformer blocks' linear layers quantized with torchao.

The attention projections and feed-forward layers of a UNet's (or DiT's) transformer blocks hold most of its
matrix-multiply FLOPs; the convolutions, norms and the small timestep/condition embeddings stay as they are.
Kinds:

- ``int8``: int8 weights and per-token dynamically quantized int8 activations (torchao
  ``Int8DynamicActivationInt8WeightConfig``; CPU and GPU);
- ``int8-weight``: int8 weights, bf16/fp32 activations (``Int8WeightOnlyConfig``): a smaller model, the same math;
- ``fp8``: float8 e4m3 weights and dynamically scaled float8 activations
  (``Float8DynamicActivationFloat8WeightConfig``; GPUs of compute capability 8.9 or more: Ada, Hopper).

The network changes in place. It is an optional extra: ``pip install "ldmkit[quant]"``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ldmkit.errors import ConfigError
from ldmkit.nn import CrossAttention, FeedForward

QUANTIZATIONS = ("int8", "int8-weight", "fp8")


def _config(kind: str, device: torch.device):
    try:
        with warnings.catch_warnings():  # torchao names the CUDA extensions a CPU build cannot load
            warnings.simplefilter("ignore")
            from torchao import quantization as q
    except ImportError:
        raise ConfigError(f'quantization {kind} needs torchao: pip install "ldmkit[quant]"') from None
    if kind == "int8":
        return q.Int8DynamicActivationInt8WeightConfig()
    if kind == "int8-weight":
        return q.Int8WeightOnlyConfig()
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise ConfigError("fp8 quantization needs a GPU of compute capability 8.9 or more (Ada, Hopper); use int8")
    return q.Float8DynamicActivationFloat8WeightConfig()


def transformer_linears(network: nn.Module) -> list[str]:
    """Names of the linear layers of ``network``'s attention and feed-forward modules, and of DiT blocks' MLPs
    (what :func:`quantize_network` converts; DiT's adaLN modulation stays in full precision)."""
    from ldmkit.denoisers.dit import DiTBlock

    names = []
    for part_name, part in network.named_modules():
        if isinstance(part, DiTBlock):
            part, part_name = part.mlp, f"{part_name}.mlp"
        elif not isinstance(part, (CrossAttention, FeedForward)):
            continue
        names += [f"{part_name}.{name}" for name, layer in part.named_modules() if isinstance(layer, nn.Linear)]
    return names


def quantize_network(network: nn.Module, kind: str) -> nn.Module:
    """Quantize the linear layers of ``network``'s transformer blocks in place as ``kind`` says; returns it.
    A network without attention or feed-forward layers is refused (there would be nothing to quantize)."""
    if kind not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization '{kind}'; use one of {', '.join(QUANTIZATIONS)}")
    chosen = set(transformer_linears(network))
    if not chosen:
        raise ConfigError(f"quantization {kind}: this {type(network).__name__} has no attention or feed-forward "
                          "layers, which are what is quantized")
    device = next(network.parameters()).device
    config = _config(kind, device)
    from torchao.quantization import quantize_

    quantize_(network, config, filter_fn=lambda module, name: name in chosen)
    return network


__all__ = ["QUANTIZATIONS", "quantize_network", "transformer_linears"]
