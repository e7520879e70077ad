"""Building a conditioner from its config, and rebuilding a saved one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ldmkit.conditioning.base import Conditioner, Unconditional
from ldmkit.conditioning.concat import ImageEncoder
from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.conditioning.tokenizer import WordTokenizer
from ldmkit.config import from_dict
from ldmkit.errors import CheckpointError, ConfigError
from ldmkit.io import load_state_strict


def build_conditioner(config: ConditionerConfig, *, captions: Iterable[str] | None = None,
                      tokenizer: WordTokenizer | None = None, first_stage: ImageEncoder | None = None,
                      pretrained_path: str | Path | None = None) -> Conditioner:
    """A freshly initialised conditioner for ``config``.

    ``captions`` (the training captions) build the vocabulary of ``kind: text`` unless ``tokenizer`` is
    given. ``first_stage`` encodes images for the masked_image / low_res-encode concat routes.
    ``pretrained_path`` points ``kind: pretrained_text`` at a model folder instead of the fetched asset.
    """
    kind = config.kind
    if kind == "none":
        return Unconditional(config, first_stage)
    if kind == "class":
        from ldmkit.conditioning.labels import ClassConditioner

        return ClassConditioner(config, first_stage)
    if kind == "text":
        from ldmkit.conditioning.text import TextConditioner

        if tokenizer is None:
            if captions is None:
                raise ConfigError("conditioning kind 'text' needs the training captions to build its vocabulary")
            text = config.text
            tokenizer = WordTokenizer.from_captions(captions, min_count=text.min_count, max_vocab=text.max_vocab,
                                                    max_length=text.max_length)
        return TextConditioner(config, tokenizer, first_stage)
    if kind == "pretrained_text":
        from ldmkit.conditioning.pretrained_text import PretrainedTextConditioner

        return PretrainedTextConditioner(config, first_stage, path=pretrained_path)
    raise ConfigError(f"unknown conditioning kind '{kind}'")


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
