"""The one object through which conditions reach the denoiser (DESIGN habit 4; paper §3.3).

Three routes, each optional:

- ``context``: a token sequence for cross-attention (text, class tokens), ``[B, T, D]``, with an
  optional ``context_mask`` ``[B, T]`` (True = a real token, False = padding);
- ``vector``: a per-sample embedding added to the timestep embedding (class labels), ``[B, D]``;
- ``concat``: an image-like condition on the latent grid, concatenated to the UNet input,
  ``[B, C, h, w]`` (masked image + mask, low-resolution image, semantic map);
- ``guidance``: the classifier-free guidance scale ``[B]`` a guidance-distilled network is asked to reproduce
  in one pass (embedded like the timestep; Meng et al. 2023, LCM §4.1), set by the pipeline, not the conditioner;
- ``sizes``: micro-conditioning (Podell et al. 2023, "SDXL", §2.2-2.3), ``[B, 6]`` float: each image's original
  height and width, the top-left corner of its crop, and the output height and width, in pixels; embedded with
  sinusoidal features and added to the timestep embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch


@dataclass(frozen=True)
class Conditioning:
    context: torch.Tensor | None = None  # [B, T, D] cross-attention tokens
    context_mask: torch.Tensor | None = None  # [B, T] bool, True where a token is real
    vector: torch.Tensor | None = None  # [B, D] added to the timestep embedding
    concat: torch.Tensor | None = None  # [B, C, h, w] concatenated to the latent input
    guidance: torch.Tensor | None = None  # [B] guidance scale w of a guidance-distilled network
    sizes: torch.Tensor | None = None  # [B, 6] original h, w, crop top, left, output h, w in pixels (SDXL)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @property
    def batch_size(self) -> int | None:
        for tensor in self._tensors().values():
            return tensor.shape[0]
        return None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Conditioning":
        """Move every route; ``dtype`` applies to floating-point tensors only (masks stay bool)."""
        moved = {}
        for name, tensor in self._tensors().items():
            cast = dtype if (dtype is not None and tensor.is_floating_point()) else None
            moved[name] = tensor.to(device=device, dtype=cast)
        return replace(self, **moved)

    def repeat(self, n: int) -> "Conditioning":
        """Each sample repeated ``n`` times along the batch (``[a, b]`` → ``[a]*n + [b]*n``)."""
        return replace(self, **{k: v.repeat_interleave(n, dim=0) for k, v in self._tensors().items()})

    def index(self, index: torch.Tensor | slice) -> "Conditioning":
        return replace(self, **{k: v[index] for k, v in self._tensors().items()})

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        """Concatenate along the batch (used to run conditional and unconditional passes in one forward).

        Every item must use the same routes; context sequences of different lengths are padded with
        zeros and masked out.
        """
        first = items[0]
        names = set(first._tensors()) - {"context_mask"}
        for item in items[1:]:
            if set(item._tensors()) - {"context_mask"} != names:
                raise ValueError("cannot batch conditionings that use different routes")
        out = {}
        for name in names:
            tensors = [getattr(item, name) for item in items]
            if name == "context":
                out[name], mask = _pad_tokens(tensors, [item.context_mask for item in items])
                if mask is not None:
                    out["context_mask"] = mask
            else:
                out[name] = torch.cat(tensors, dim=0)
        return Conditioning(**out)


def _pad_tokens(contexts: list[torch.Tensor], masks: list[torch.Tensor | None]):
    """Pad ``[B_i, T_i, D]`` sequences to the longest ``T`` and build the matching mask."""
    longest = max(c.shape[1] for c in contexts)
    if all(c.shape[1] == longest for c in contexts) and all(m is None for m in masks):
        return torch.cat(contexts, dim=0), None
    padded, full_masks = [], []
    for context, mask in zip(contexts, masks):
        b, t, d = context.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=context.device)
        if t < longest:
            context = torch.cat([context, context.new_zeros(b, longest - t, d)], dim=1)
            mask = torch.cat([mask, mask.new_zeros(b, longest - t)], dim=1)
        padded.append(context)
        full_masks.append(mask)
    return torch.cat(padded, dim=0), torch.cat(full_masks, dim=0)
