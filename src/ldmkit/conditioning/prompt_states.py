"""Pre-computed encodings of prompts by the frozen text encoder (``pretrained.states_file``).

A frozen encoder gives every caption the same states at every step, so a training run can look them up
instead of running the network: ``ldm encode --text --data PRESET --out prompts.safetensors`` writes
them once. The file also lets a model train and sample where the encoder's weights are not at hand.

File layout (safetensors; nothing is unpickled)::

    states   [N, 384] float16   the real-token states of every prompt, one after another
    offsets  [P + 1]  int64     prompt i owns states[offsets[i]:offsets[i + 1]]
    metadata: prompts (JSON list), encoder (asset name), max_length
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch

from ldmkit.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from ldmkit.conditioning.pretrained_text import PretrainedTextConditioner


class PromptStates:
    """Read-only lookup prompt → states [T, 384] (float32, on the CPU)."""

    def __init__(self, path: str | Path):
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"prompt-states file {self.path} does not exist; write it with "
                              f"`ldm encode --text --data PRESET --out {self.path}`")
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                meta = handle.metadata() or {}
                states, offsets = handle.get_tensor("states"), handle.get_tensor("offsets")
            prompts = json.loads(meta["prompts"])
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{self.path} is not a prompt-states file ({exc}); write it again with "
                                  f"`ldm encode --text`") from None
        if offsets.shape != (len(prompts) + 1,) or int(offsets[-1]) != states.shape[0]:
            raise CheckpointError(f"{self.path} is inconsistent: {len(prompts)} prompts, "
                                  f"{offsets.numel()} offsets, {states.shape[0]} states; write it again")
        self.encoder = meta.get("encoder", "")
        self.max_length = int(meta.get("max_length", 0))
        self._states = states
        self._index = {prompt: i for i, prompt in enumerate(prompts)}
        self._offsets = offsets.tolist()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._index

    def get(self, prompt: str) -> torch.Tensor | None:
        """The prompt's states [T, 384] (float32), or None when the file does not hold it."""
        i = self._index.get(prompt)
        if i is None:
            return None
        return self._states[self._offsets[i]: self._offsets[i + 1]].float()

    def check_matches(self, encoder: str, max_length: int) -> None:
        """Refuse a file written by another encoder or with another token limit."""
        if (self.encoder, self.max_length) != (encoder, max_length):
            raise ConfigError(f"{self.path} was written with encoder '{self.encoder}' and max_length "
                              f"{self.max_length}, but the model uses '{encoder}' and {max_length}; "
                              f"write it again with `ldm encode --text`")


def write_prompt_states(path: str | Path, prompts: Iterable[str], conditioner: "PretrainedTextConditioner",
                        batch_size: int = 256, progress: bool = False) -> Path:
    """Encode each distinct prompt (and the empty prompt, the null condition) once and save them all."""
    from safetensors.torch import save_file

    from ldmkit.io.model_dir import fsync_path

    unique = list(dict.fromkeys(["", *(p or "" for p in prompts)]))
    chunks: list[torch.Tensor] = []
    offsets = [0]
    bar = None
    if progress:
        from ldmkit.progress import progress_bar

        bar = progress_bar(total=len(unique), desc="encode prompts", unit="prompt")
    for lo in range(0, len(unique), batch_size):
        for states in conditioner.encode_network(unique[lo: lo + batch_size]):
            chunks.append(states.to(device="cpu", dtype=torch.float16))
            offsets.append(offsets[-1] + states.shape[0])
        if bar is not None:
            bar.update(min(batch_size, len(unique) - lo))
    if bar is not None:
        bar.close()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pretrained = conditioner.config.pretrained
    save_file({"states": torch.cat(chunks).contiguous(), "offsets": torch.tensor(offsets, dtype=torch.int64)},
              str(partial), metadata={"prompts": json.dumps(unique), "encoder": pretrained.asset,
                                      "max_length": str(pretrained.max_length)})
    fsync_path(partial)
    partial.replace(path)  # atomic: a reader never sees half a file
    return path
