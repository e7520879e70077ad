"""Serialisation: model directories (safetensors + config.json)."""

from ldmkit.io.model_dir import (
    ModelDirInfo,
    load_state_strict,
    load_weights,
    read_model_dir,
    save_model_dir,
    sha256_file,
)

__all__ = ["ModelDirInfo", "load_state_strict", "load_weights", "read_model_dir", "save_model_dir", "sha256_file"]
