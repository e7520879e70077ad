"""The ``lora:`` section of a diffusion experiment: train low-rank adapters instead of the whole network."""

from __future__ import annotations

from dataclasses import dataclass

from ldmkit.adapters.targets import check_groups
from ldmkit.config import option


@dataclass(frozen=True)
class LoraConfig:
    """LoRA (Hu et al. 2021): each targeted layer W gains (α / r)·B·A, A [r, in], B [out, r]; only A and B train."""

    rank: int = option(0, help="rank r of the adapters (0: no LoRA, the networks train as train.trainable says)",
                       min=0)
    alpha: float = option(0.0, help="alpha α: the update is scaled by α / r (0: α = r, scaling 1)", min=0.0)
    dropout: float = option(0.0, help="dropout on the adapters' input while training", min=0.0, max=1.0)
    targets: tuple[str, ...] = option(("attention",), help="layer groups adapted: attention, feedforward, "
                                                           "projections, convolutions, text_encoder")
    name: str = option("lora", help="file name of the adapter (model/adapters/NAME.safetensors)")
    train_conditioner: bool = option(False, help="also train the conditioner's own weights in full, as pivotal "
                                                 "tuning does: the embeddings of new classes learn beside a UNet "
                                                 "LoRA (the adapter then needs the base model written with it)")

    def __post_init__(self) -> None:
        if self.rank:
            check_groups(self.targets)

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale_alpha(self) -> float:
        return self.alpha or float(self.rank)


__all__ = ["LoraConfig"]
