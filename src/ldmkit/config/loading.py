"""YAML experiment files, ``key.sub=value`` overrides and preset lookup.

A preset is a YAML file under ``configs/<group>/<name>.yaml`` (shipped inside the package, linked to
the repository's top-level ``configs/``); ``--config`` takes a preset name (``kl-f4``) or a path.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from ldmkit.config.schema import from_dict, to_dict
from ldmkit.errors import ConfigError

C = TypeVar("C")

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` → (["train", "lr"], 0.0001). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}' has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``key.sub=value`` applied (nested mappings are created)."""
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{'.'.join(parts[: i + 1])}' is not a mapping")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def list_presets(group: str) -> list[str]:
    folder = PRESETS_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_preset(name_or_path: str | Path, group: str) -> Path:
    """A path to an existing YAML file, or the preset of that name in ``configs/<group>/``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        return path
    preset = PRESETS_DIR / group / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    names = list_presets(group)
    close = difflib.get_close_matches(str(name_or_path), names, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"presets: {', '.join(names) or 'none'}"
    raise ConfigError(f"no config file or {group} preset named '{name_or_path}'; {hint}")


def load_config(cls: type[C], source: str | Path | None = None, overrides: Iterable[str] = (),
                group: str = "") -> C:
    """Load a YAML preset or file (or only defaults), apply overrides, validate against ``cls``."""
    data = read_yaml(resolve_preset(source, group)) if source is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))


def dump_yaml(config: Any, path: str | Path) -> None:
    """Write the resolved config next to an output, so a run can be reproduced from it."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
