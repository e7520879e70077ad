"""Typed configuration: dataclass schemas, YAML presets, overrides and registries."""

from ldmkit.config.checks import MAX_SEED, check_count, check_finite, check_seed, is_finite_number
from ldmkit.config.loading import (
    apply_overrides,
    dump_yaml,
    list_presets,
    load_config,
    parse_override,
    read_yaml,
    resolve_preset,
)
from ldmkit.config.registry import Registry, named_preset
from ldmkit.config.schema import describe_fields, from_dict, option, to_dict

__all__ = [
    "MAX_SEED",
    "Registry",
    "apply_overrides",
    "check_count",
    "check_finite",
    "check_seed",
    "describe_fields",
    "dump_yaml",
    "from_dict",
    "is_finite_number",
    "list_presets",
    "named_preset",
    "load_config",
    "option",
    "parse_override",
    "read_yaml",
    "resolve_preset",
    "to_dict",
]
