"""Frozen pretrained text encoder: all-MiniLM-L6-v2 (sentence-transformers), per-token states as context.

The LDM paper trains its text encoder; later latent diffusion models use a frozen pretrained one. MiniLM is
the one pretrained text encoder obtainable offline here (``ldm assets fetch minilm``). Its last hidden
states [B, T, 384] and attention mask are the cross-attention context; the null condition is the empty
prompt encoded ([CLS] [SEP]). The network stays in eval mode without gradients; the encodings of repeated
prompts are cached. With ``pretrained.states_file`` (see :mod:`ldmkit.conditioning.prompt_states`) prompts
are looked up in pre-computed states first and the network is loaded only for a prompt the file lacks.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from ldmkit.conditioning.base import CaptionConditioner
from ldmkit.conditioning.concat import ImageEncoder
from ldmkit.conditioning.config import MINILM_DIM, ConditionerConfig
from ldmkit.conditioning.types import Conditioning
from ldmkit.errors import AssetMissingError, CheckpointError, ConfigError


def _asset_dir(name: str) -> Path:
    try:
        from ldmkit.assets import require
    except ModuleNotFoundError as exc:
        if exc.name not in ("ldmkit.assets",):
            raise
        raise AssetMissingError(f"the '{name}' text encoder is not available: run `ldm assets fetch {name}`") from None
    return Path(require(name))


def _model_dir(root: Path) -> Path:
    """The folder holding config.json and the tokenizer: ``root`` itself or the one folder below it that does."""
    if (root / "config.json").is_file():
        return root
    found = sorted(p.parent for p in root.rglob("config.json") if (p.parent / "tokenizer_config.json").is_file())
    if not found:
        raise CheckpointError(f"{root} holds no transformers model (config.json + tokenizer); "
                              f"fetch it again with `ldm assets fetch minilm`")
    return found[0]


class PretrainedTextConditioner(CaptionConditioner):
    """``kind: pretrained_text``: prompt → MiniLM last hidden states ``context`` [B, T, 384] + mask."""

    trainable = False

    def __init__(self, config: ConditionerConfig, first_stage: ImageEncoder | None = None,
                 path: str | Path | None = None):
        super().__init__(config, first_stage)
        self._path = path
        self.__dict__["model"] = None
        self.tokenizer = None
        # Follows .to(device) / .half() even while the network is not loaded (non-persistent: not saved).
        self.register_buffer("_probe", torch.zeros(0), persistent=False)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.precomputed = None
        if config.pretrained.states_file:
            from ldmkit.conditioning.prompt_states import PromptStates

            self.precomputed = PromptStates(config.pretrained.states_file)
            self.precomputed.check_matches(config.pretrained.asset, config.pretrained.max_length)
        else:
            self._load_network()

    def _load_network(self) -> None:
        """Load the tokenizer and the frozen network (once)."""
        if self.model is not None:
            return
        config = self.config
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise ConfigError("conditioning kind 'pretrained_text' needs transformers: "
                              "pip install 'ldmkit[text]'") from None
        path = self._path
        folder = _model_dir(Path(path) if path is not None else _asset_dir(config.pretrained.asset))
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a local load of a small model needs no progress bar
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            network = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load the text encoder from {folder} ({exc}); "
                                  f"fetch it again with `ldm assets fetch {config.pretrained.asset}`") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        if network.config.hidden_size != MINILM_DIM:
            raise CheckpointError(f"text encoder in {folder} has width {network.config.hidden_size}, "
                                  f"expected {MINILM_DIM}")
        # Kept out of the module tree, so its weights stay out of state_dict() and the optimiser; _apply
        # below still moves it with the conditioner (.to(device), .half()).
        network = network.eval().requires_grad_(False)
        self.__dict__["model"] = network.to(device=self._probe.device)

    def train(self, mode: bool = True) -> "PretrainedTextConditioner":
        super().train(mode)  # self.training drives condition dropout …
        if self.model is not None:
            self.model.eval()  # … but the frozen network always runs in eval mode
        return self

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # cached encodings live on the old device/dtype
        if self.model is not None:
            self.model._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self._probe.device

    def _encode_uncached(self, prompts: list[str]) -> list[torch.Tensor]:
        """Each prompt's real-token states [T_i, 384]: from the pre-computed file, else from the network."""
        if self.precomputed is None:
            return self.encode_network(prompts)
        found = [self.precomputed.get(p) for p in prompts]
        missing = [p for p, states in zip(prompts, found) if states is None]
        if missing:
            try:
                computed = iter(self.encode_network(missing))
            except AssetMissingError:
                raise AssetMissingError(
                    f"prompt {missing[0]!r} is not in {self.precomputed.path} and the "
                    f"'{self.config.pretrained.asset}' text encoder is not available: run "
                    f"`ldm assets fetch {self.config.pretrained.asset}` or add the prompt to the file") from None
            found = [states if states is not None else next(computed) for states in found]
        return [states.to(self.device) for states in found]

    @torch.no_grad()
    def encode_network(self, prompts: list[str]) -> list[torch.Tensor]:
        """Each prompt's real-token states [T_i, 384], computed by the network in one batch."""
        self._load_network()
        device = self.device
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.config.pretrained.max_length,
                                return_tensors="pt").to(device)
        states = self.model(**tokens).last_hidden_state  # [B, T, 384]
        lengths = tokens["attention_mask"].sum(dim=1).tolist()
        return [states[i, :n].float() for i, n in enumerate(lengths)]

    def _states(self, prompts: list[str]) -> list[torch.Tensor]:
        size = self.config.pretrained.cache_size
        if size == 0:
            return self._encode_uncached(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for prompt, states in zip(missing, self._encode_uncached(missing)):
                self._cache[prompt] = states
        out = []
        for prompt in prompts:
            states = self._cache.get(prompt)
            if states is None:  # evicted while this batch was added (more distinct prompts than the cache)
                states = self._encode_uncached([prompt])[0]
            else:
                self._cache.move_to_end(prompt)
            out.append(states)
        while len(self._cache) > size:
            self._cache.popitem(last=False)
        return out

    def _encode_texts(self, prompts: list[str]) -> Conditioning:
        states = self._states(prompts)
        longest = max(s.shape[0] for s in states)
        context = states[0].new_zeros(len(states), longest, MINILM_DIM)  # [B, T, 384]
        mask = torch.zeros(len(states), longest, dtype=torch.bool, device=context.device)  # [B, T]
        for i, s in enumerate(states):
            context[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = True
        return Conditioning(context=context, context_mask=mask)

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        cond = self.encode_prompts([""] * batch_size)
        return cond.to(device) if device is not None else cond

