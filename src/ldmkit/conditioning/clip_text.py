"""Frozen CLIP text encoders of Stable Diffusion as a conditioner (``kind: clip_text``).

The network is ``transformers.CLIPTextModel`` (CLIP ViT-L/14 for SD 1.x; OpenCLIP ViT-H/14's text tower, held
in the same class as diffusers does, for SD 2.x); its weights come from the converted checkpoint and are saved
with the model. Prompts are tokenised with CLIP's BPE vocabulary (asset ``clip-vocab``, or a tokenizer folder
with vocab.json + merges.txt) and padded to ``max_length`` tokens; the context is the last hidden states
``[B, 77, width]`` of every position, padding included and unmasked, as Stable Diffusion was trained. The null
condition is the empty prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ldmkit.conditioning.base import CaptionConditioner
from ldmkit.conditioning.concat import ImageEncoder
from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.conditioning.types import Conditioning
from ldmkit.errors import AssetMissingError, CheckpointError, ConfigError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("conditioning kind 'clip_text' needs transformers: pip install 'ldmkit[text]'") from None
    return transformers


def text_model_config(config: ConditionerConfig):
    """The ``transformers.CLIPTextConfig`` of ``config.clip``."""
    c = config.clip
    return _transformers().CLIPTextConfig(
        vocab_size=c.vocab_size, hidden_size=c.width, intermediate_size=c.mlp_width, num_hidden_layers=c.layers,
        num_attention_heads=c.heads, max_position_embeddings=c.max_length, hidden_act=c.activation,
        projection_dim=c.width, layer_norm_eps=1e-5, bos_token_id=c.vocab_size - 2, eos_token_id=c.vocab_size - 1,
        pad_token_id=1)


def load_clip_tokenizer(folder: str | Path, pad_token: str, max_length: int = 77):
    """A ``CLIPTokenizer`` from ``vocab.json`` + ``merges.txt`` in ``folder``."""
    folder = Path(folder)
    try:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder} holds no readable CLIP vocabulary (vocab.json + merges.txt): {exc}; "
                              "run `ldm assets fetch clip-vocab`") from None
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return _transformers().CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, bos_token=BOS,
                                         eos_token=EOS, unk_token=EOS, model_max_length=max_length)


class ClipTextConditioner(CaptionConditioner):
    """``kind: clip_text``: prompt → CLIP last hidden states ``context`` [B, max_length, width]."""

    trainable = False

    def __init__(self, config: ConditionerConfig, first_stage: ImageEncoder | None = None,
                 tokenizer_path: str | Path | None = None):
        super().__init__(config, first_stage)
        self.encoder = _transformers().CLIPTextModel(text_model_config(config)).eval().requires_grad_(False)
        self._tokenizer_path = tokenizer_path
        self.tokenizer = None

    def train(self, mode: bool = True) -> "ClipTextConditioner":
        super().train(mode)  # drives condition dropout; the frozen network stays in eval mode
        self.encoder.eval()
        return self

    def _load_tokenizer(self):
        if self.tokenizer is None:
            folder = self._tokenizer_path
            named = self.config.clip.tokenizer
            if folder is None and Path(named).is_dir():  # a folder with vocab.json + merges.txt
                folder = named
            if folder is None:
                from ldmkit.assets import require

                try:
                    folder = require(named)
                except AssetMissingError as exc:
                    raise AssetMissingError(f"the CLIP tokenizer vocabulary is missing: {exc}") from None
            self.tokenizer = load_clip_tokenizer(folder, self.config.clip.pad_token, self.config.clip.max_length)
        return self.tokenizer

    @torch.no_grad()
    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """[B, max_length] token ids: start, BPE tokens (cut to fit), end, padding."""
        tokens = self._load_tokenizer()(prompts, padding="max_length", truncation=True,
                                        max_length=self.config.clip.max_length, return_tensors="pt")
        return tokens.input_ids

    def _encode_texts(self, prompts: list[str]) -> Conditioning:
        device = self.encoder.get_input_embeddings().weight.device
        # Frozen: no autograd, unless LoRA adapters inside it train (lora.targets with text_encoder).
        adapted = any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and adapted):
            states = self.encoder(input_ids=self.token_ids(prompts).to(device)).last_hidden_state  # [B, T, width]
        label = self.config.clip.vector_label
        vector = None if label is None else torch.full((len(prompts),), label, dtype=torch.long, device=device)
        return Conditioning(context=states, vector=vector)

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        cond = self.encode_prompts([""] * batch_size)
        return cond.to(device) if device is not None else cond
