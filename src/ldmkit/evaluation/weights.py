"""Reading pretrained feature-network weights: safetensors, or original ``.pth`` files without unpickling code."""

from __future__ import annotations

from pathlib import Path

import torch

from ldmkit.errors import AssetMissingError, CheckpointError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a plain ``.pth``/``.pt`` state dict (loaded with ``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} cannot be read as safetensors ({exc})") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for damaged or non-weight files
        raise CheckpointError(f"{path} cannot be read as a PyTorch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a plain state dict of tensors")
    return state


def asset_file(asset: str, filename: str, user_path: str | Path | None, flag: str) -> Path:
    """``user_path`` (a file, or a directory holding ``filename``) if given, else the fetched asset's file."""
    if user_path is not None:
        path = Path(user_path)
        if path.is_dir():
            path = path / filename
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist")
        return path
    try:
        from ldmkit.assets import require
    except ImportError:
        raise AssetMissingError(
            f"{asset} weights are not available: run `ldm assets fetch {asset}` or pass {flag} PATH"
        ) from None
    return Path(require(asset)) / filename
