"""Building a conditioner from its config, and rebuilding a saved one."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from ldmkit.conditioning.base import Conditioner, Unconditional
from ldmkit.conditioning.concat import ImageEncoder
from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.conditioning.tokenizer import WordTokenizer
from ldmkit.config import Registry, from_dict
from ldmkit.errors import CheckpointError, ConfigError
from ldmkit.io import load_state_strict


@dataclass(frozen=True)
class BuildInputs:
    """What building a conditioner may need besides its config."""

    captions: Iterable[str] | None = None  # training captions (a vocabulary built from data)
    tokenizer: WordTokenizer | None = None  # a saved vocabulary, when rebuilding
    first_stage: ImageEncoder | None = None  # encodes images for the concat routes that need latents
    pretrained_path: str | Path | None = None  # a model folder instead of a fetched asset


ConditionerBuilder = Callable[[ConditionerConfig, BuildInputs], Conditioner]

#: conditioning kind → builder. A new kind is one file with its Conditioner and one ``register_conditioner``
#: line here (plus its name in ``ConditionerKind``).
CONDITIONERS: Registry[ConditionerBuilder] = Registry("conditioning kind")


def register_conditioner(kind: str) -> Callable[[ConditionerBuilder], ConditionerBuilder]:
    return CONDITIONERS.register(kind)


@register_conditioner("none")
def _unconditional(config: ConditionerConfig, inputs: BuildInputs) -> Conditioner:
    return Unconditional(config, inputs.first_stage)


@register_conditioner("class")
def _class_labels(config: ConditionerConfig, inputs: BuildInputs) -> Conditioner:
    from ldmkit.conditioning.labels import ClassConditioner

    return ClassConditioner(config, inputs.first_stage)


@register_conditioner("text")
def _text(config: ConditionerConfig, inputs: BuildInputs) -> Conditioner:
    from ldmkit.conditioning.text import TextConditioner

    tokenizer = inputs.tokenizer
    if tokenizer is None:
        if inputs.captions is None:
            raise ConfigError("conditioning kind 'text' needs the training captions to build its vocabulary")
        text = config.text
        tokenizer = WordTokenizer.from_captions(inputs.captions, min_count=text.min_count, max_vocab=text.max_vocab,
                                                max_length=text.max_length)
    return TextConditioner(config, tokenizer, inputs.first_stage)


@register_conditioner("pretrained_text")
def _pretrained_text(config: ConditionerConfig, inputs: BuildInputs) -> Conditioner:
    from ldmkit.conditioning.pretrained_text import PretrainedTextConditioner

    return PretrainedTextConditioner(config, inputs.first_stage, path=inputs.pretrained_path)


@register_conditioner("clip_text")
def _clip_text(config: ConditionerConfig, inputs: BuildInputs) -> Conditioner:
    from ldmkit.conditioning.clip_text import ClipTextConditioner

    return ClipTextConditioner(config, inputs.first_stage, tokenizer_path=inputs.pretrained_path)


def build_conditioner(config: ConditionerConfig, *, captions: Iterable[str] | None = None,
                      tokenizer: WordTokenizer | None = None, first_stage: ImageEncoder | None = None,
                      pretrained_path: str | Path | None = None) -> Conditioner:
    """A freshly initialised conditioner for ``config``.

    ``captions`` (the training captions) build the vocabulary of ``kind: text`` unless ``tokenizer`` is
    given. ``first_stage`` encodes images for the masked_image / low_res-encode concat routes.
    ``pretrained_path`` points ``kind: pretrained_text`` at a model folder instead of the fetched asset.
    """
    inputs = BuildInputs(captions=captions, tokenizer=tokenizer, first_stage=first_stage,
                         pretrained_path=pretrained_path)
    return CONDITIONERS.get(config.kind)(config, inputs)


def load_conditioner(tensors: Mapping[str, torch.Tensor], data: Mapping[str, Any], *,
                     first_stage: ImageEncoder | None = None, pretrained_path: str | Path | None = None,
                     source: str = "the saved conditioner") -> Conditioner:
    """Rebuild a conditioner from what :meth:`Conditioner.state_for_saving` returned."""
    if "config" not in data:
        raise CheckpointError(f"{source} has no conditioning config")
    config = from_dict(ConditionerConfig, data["config"])
    states_file = config.pretrained.states_file
    if config.kind == "pretrained_text" and states_file and not Path(states_file).is_file():
        # The pre-computed prompt states of training are not here: encode prompts with the network instead.
        config = replace(config, pretrained=replace(config.pretrained, states_file=""))
    tokenizer = WordTokenizer.from_dict(data["tokenizer"]) if config.kind == "text" and "tokenizer" in data else None
    if config.kind == "text" and tokenizer is None:
        raise CheckpointError(f"{source} has no tokenizer vocabulary")
    conditioner = build_conditioner(config, tokenizer=tokenizer, first_stage=first_stage,
                                    pretrained_path=pretrained_path)
    load_state_strict(conditioner, tensors, source)
    return conditioner
