"""The common interface of the conditioning encoders τ_θ (paper §3.3).

A :class:`Conditioner` turns a training batch (or prompts / labels at sampling time) into a
:class:`Conditioning`. Its main route comes from the subclass (class label → ``vector``, caption →
``context``); an optional :class:`~ldmkit.conditioning.concat.ConcatEncoder` adds the ``concat`` route.
During training the main condition of each sample is replaced by the null condition with probability
``config.drop_prob`` (classifier-free guidance); the concat route is always kept, as guidance for
inpainting and super-resolution steers the text/class condition only. With ``config.size_conditioning`` the
batch's image geometry becomes the ``sizes`` route (:mod:`ldmkit.conditioning.sizes`), also kept.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ldmkit.conditioning.concat import ConcatEncoder, ImageEncoder
from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.conditioning.dropout import sample_drop_mask
from ldmkit.conditioning.merge import merge_conditionings
from ldmkit.conditioning.sizes import batch_sizes
from ldmkit.conditioning.types import Conditioning
from ldmkit.config import to_dict
from ldmkit.errors import ConfigError, DataError

Batch = Mapping[str, Any]


def batch_size_of(batch: Batch) -> int:
    """Number of samples in a batch dict (from its first tensor or caption list)."""
    for key in ("image", "latent", "label", "segmentation", "caption", "low_res", "mask"):
        value = batch.get(key)
        if value is not None:
            return len(value)
    raise DataError(f"cannot tell the batch size: the batch has none of image, latent, label, caption "
                    f"(keys: {', '.join(sorted(batch)) or 'none'})")


class Conditioner(nn.Module):
    """Base class: encode a batch, give the null condition, describe the routes for the UNet config.

    Subclasses implement :meth:`_encode_main` and :meth:`null` and set :attr:`trainable`.
    """

    #: Whether the parameters join the optimiser (the frozen pretrained encoder's do not).
    trainable: bool = False

    def __init__(self, config: ConditionerConfig, first_stage: ImageEncoder | None = None):
        super().__init__()
        self.config = config
        self.concat_encoder = ConcatEncoder(config.concat, first_stage) if config.concat.kind != "none" else None

    # ----------------------------------------------------------------------------------- routes
    @property
    def context_dim(self) -> int | None:
        """Width of ``context`` tokens (the UNet's cross-attention context size), None without context."""
        return self.config.context_dim

    @property
    def vector_dim(self) -> int | None:
        """Width of ``vector`` (the UNet projects it onto the timestep embedding), None without vector."""
        return self.config.vector_dim

    @property
    def concat_channels(self) -> int:
        """Channels of ``concat`` (the UNet's input has latent channels + this), 0 without concat."""
        return self.config.concat.channels

    @property
    def device(self) -> torch.device:
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def set_first_stage(self, first_stage: ImageEncoder | None) -> None:
        """The image → latent encoder used by the masked_image (and low_res encode) concat routes."""
        if self.concat_encoder is not None:
            self.concat_encoder.set_first_stage(first_stage)

    # ---------------------------------------------------------------------------------- encoding
    def encode(self, batch: Batch, *, drop: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> Conditioning:
        """The condition of a training batch.

        ``drop`` [B] bool marks samples whose main condition becomes the null condition; when it is None
        and the module is in training mode, it is drawn with probability ``config.drop_prob``. Pass
        ``torch.zeros(B, dtype=torch.bool)`` to keep every condition while training.
        """
        size = batch_size_of(batch)
        if drop is None and self.training and self.config.drop_prob > 0:
            drop = sample_drop_mask(size, self.config.drop_prob, generator)
        if drop is not None:
            drop = torch.as_tensor(drop, dtype=torch.bool)
            if drop.shape != (size,):
                raise ValueError(f"drop mask has shape {tuple(drop.shape)}, expected ({size},)")
        cond = self._encode_main(batch, drop, size)
        if self.concat_encoder is not None:
            cond = merge_conditionings(cond, self.concat_encoder(batch, generator=generator))
        if self.config.size_conditioning:
            cond = merge_conditionings(cond, Conditioning(sizes=batch_sizes(batch)))
        return cond

    def forward(self, batch: Batch, drop: torch.Tensor | None = None) -> Conditioning:
        return self.encode(batch, drop=drop)

    def _encode_main(self, batch: Batch, drop: torch.Tensor | None, batch_size: int) -> Conditioning:
        raise NotImplementedError

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        """The unconditional condition (main route only) that classifier-free guidance contrasts with."""
        raise NotImplementedError

    def unconditional_like(self, cond: Conditioning) -> Conditioning:
        """The null main condition for ``cond``'s batch, keeping ``cond``'s concat and size routes.

        This is the second branch of classifier-free guidance; it uses the same routes as ``cond``, so
        ``Conditioning.cat([cond, conditioner.unconditional_like(cond)])`` works.
        """
        size = cond.batch_size
        if size is None:
            return cond
        device = next(iter(cond._tensors().values())).device
        null = self.null(size, device)
        kept = Conditioning(concat=cond.concat, sizes=cond.sizes)
        return merge_conditionings(null, kept) if kept.batch_size is not None else null

    def encode_prompts(self, prompts: Sequence[str], *, drop: torch.Tensor | None = None) -> Conditioning:
        """The condition of text prompts (text kinds only)."""
        raise ConfigError(f"conditioning kind '{self.config.kind}' does not take text prompts")

    def encode_labels(self, labels: torch.Tensor | Sequence[int], *, drop: torch.Tensor | None = None
                      ) -> Conditioning:
        """The condition of class labels (class kind only)."""
        raise ConfigError(f"conditioning kind '{self.config.kind}' does not take class labels")

    # ------------------------------------------------------------------------------------ saving
    def config_dict(self) -> dict[str, Any]:
        """The config as plain data (for ``config.json``)."""
        return to_dict(self.config)

    def state_for_saving(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON data) that :func:`~ldmkit.conditioning.load_conditioner` rebuilds this from.

        The JSON data holds the config (and the tokenizer vocabulary where there is one).
        """
        tensors = {k: v.detach() for k, v in self.state_dict().items()}
        return tensors, {"config": self.config_dict()}


class CaptionConditioner(Conditioner):
    """A conditioner whose main route is a caption; a dropped caption becomes the empty prompt."""

    def _encode_main(self, batch: Batch, drop: torch.Tensor | None, batch_size: int) -> Conditioning:
        captions = batch.get("caption")
        if captions is None:
            raise DataError("text conditioning needs 'caption' in the batch")
        return self.encode_prompts(captions, drop=drop)

    def encode_prompts(self, prompts: Sequence[str], *, drop: torch.Tensor | None = None) -> Conditioning:
        prompts = [p or "" for p in prompts]
        if drop is not None:
            prompts = ["" if d else p for p, d in zip(prompts, torch.as_tensor(drop, dtype=torch.bool).tolist())]
        return self._encode_texts(prompts)

    def _encode_texts(self, prompts: list[str]) -> Conditioning:  # pragma: no cover - abstract
        raise NotImplementedError


class Unconditional(Conditioner):
    """``kind: none``: no main condition (only a concat route, if configured)."""

    def _encode_main(self, batch: Batch, drop: torch.Tensor | None, batch_size: int) -> Conditioning:
        return Conditioning()

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        return Conditioning()
