"""Typed configuration: dataclass schemas, YAML presets, overrides and registries."""

from ldmkit.config.loading import (
    apply_overrides,
    dump_yaml,
    list_presets,
    load_config,
    parse_override,
    read_yaml,
    resolve_preset,
)
from ldmkit.config.registry import Registry
from ldmkit.config.schema import describe_fields, from_dict, option, to_dict

__all__ = [
    "Registry",
    "apply_overrides",
    "describe_fields",
    "dump_yaml",
    "from_dict",
    "list_presets",
    "load_config",
    "option",
    "parse_override",
    "read_yaml",
    "resolve_preset",
    "to_dict",
]
