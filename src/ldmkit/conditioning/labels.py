"""Class-conditional encoder: a label embedding table with one extra null class (paper §3.3, §4.1)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ldmkit.conditioning.base import Batch, Conditioner
from ldmkit.conditioning.concat import ImageEncoder
from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.conditioning.types import Conditioning
from ldmkit.errors import ConfigError, DataError


class ClassConditioner(Conditioner):
    """Label y ∈ {0 … K−1} → ``vector`` [B, D] (or, with ``class_route: context``, one ``context`` token
    [B, 1, D]); index K is the learned null class.

    A label of −1 (a sample without a label) is encoded as the null class, so unlabelled images train the
    unconditional model.
    """

    trainable = True

    def __init__(self, config: ConditionerConfig, first_stage: ImageEncoder | None = None):
        super().__init__(config, first_stage)
        self.embedding = nn.Embedding(config.num_classes + 1, config.embed_dim)

    @property
    def null_index(self) -> int:
        return self.config.num_classes

    def _encode_main(self, batch: Batch, drop: torch.Tensor | None, batch_size: int) -> Conditioning:
        labels = batch.get("label")
        if labels is None:
            raise DataError("class conditioning needs 'label' in the batch")
        return self.encode_labels(labels, drop=drop)

    def encode_labels(self, labels: torch.Tensor | Sequence[int], *, drop: torch.Tensor | None = None
                      ) -> Conditioning:
        device = self.embedding.weight.device
        labels = torch.as_tensor(labels, dtype=torch.long).to(device).reshape(-1)  # [B]
        k = self.config.num_classes
        if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= k):
            bad = int(labels.min()) if int(labels.min()) < -1 else int(labels.max())
            raise ConfigError(f"class label {bad} is outside 0..{k - 1} (num_classes {k}; -1 means no label)")
        labels = torch.where(labels < 0, torch.full_like(labels, self.null_index), labels)
        if drop is not None:
            drop = torch.as_tensor(drop, dtype=torch.bool).to(device)
            labels = torch.where(drop, torch.full_like(labels, self.null_index), labels)
        return self._route(self.embedding(labels))

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        labels = torch.full((batch_size,), self.null_index, dtype=torch.long, device=self.embedding.weight.device)
        vector = self.embedding(labels)  # [B, D]
        return self._route(vector.to(device) if device is not None else vector)

    def _route(self, embedded: torch.Tensor) -> Conditioning:
        """[B, D] embeddings → the route the config names."""
        if self.config.class_route == "context":
            return Conditioning(context=embedded[:, None])  # [B, 1, D]
        return Conditioning(vector=embedded)  # [B, D]
