"""Starting a new run from the weights of a model directory (``train.init_from``): fine-tuning.

Unlike a resume, only weights are taken: the optimiser, the learning-rate schedule, the data position and the
EMA start afresh, and the run's own config decides the architecture — weights that do not fit it are refused
in one line naming the keys (:func:`~ldmkit.io.model_dir.load_state_strict`). Every start of the run reads the
directory again (a resume then replaces the weights by its checkpoint's), so keep it until the run is done.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ldmkit.errors import CheckpointError
from ldmkit.io import load_state_strict, load_weights, read_model_dir
from ldmkit.io.model_dir import ModelDirInfo


def read_init(path: str, kind: str) -> ModelDirInfo:
    """The model directory ``train.init_from`` names, which must hold a model of ``kind``."""
    try:
        return read_model_dir(path, kind=kind)
    except CheckpointError as exc:
        raise CheckpointError(f"train.init_from: {exc}") from None


def load_component(module: torch.nn.Module, info: ModelDirInfo, name: str, *, may_add: tuple[str, ...] = ()) -> None:
    """Load component ``name`` of ``info`` into ``module``, refusing weights of another architecture.

    ``may_add``: prefixes of parameters the saved weights may lack, a route added for fine-tuning (it starts at
    zero, so the model begins as it was); they keep ``module``'s own values."""
    if name not in info.files:
        have = ", ".join(sorted(info.files)) or "none"
        raise CheckpointError(f"train.init_from={info.path} has no {name} weights (it holds: {have}); "
                              "start from a model with the same network")
    state = load_weights(info, name)
    if may_add:
        added = {k: v for k, v in module.state_dict().items() if k.startswith(may_add) and k not in state}
        state = {**state, **added}
    load_state_strict(module, state, f"train.init_from={info.path} ({name})")


def check_same_autoencoder(info: ModelDirInfo, autoencoder: str | Path) -> None:
    """An LDM starts only from one trained on the same first stage: another's latents mean other things."""
    recorded = (info.extra.get("autoencoder") or {}).get("sha256")
    ours = read_model_dir(autoencoder, kind="autoencoder").files.get("model")
    if recorded and ours and recorded != ours:
        raise CheckpointError(f"train.init_from={info.path} was trained on another autoencoder than "
                              f"autoencoder={autoencoder} (SHA-256 differs); use its own copy: "
                              f"autoencoder={info.path / 'autoencoder'}")


__all__ = ["check_same_autoencoder", "load_component", "read_init"]
