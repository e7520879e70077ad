from dataclasses import dataclass
from typing import Literal

import pytest

from ldmkit.config import Registry, apply_overrides, from_dict, load_config, option, to_dict
from ldmkit.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    channels: int = option(8, help="width", min=1)
    mult: tuple[int, ...] = option((1, 2), help="multipliers", min=1)


@dataclass(frozen=True)
class Outer:
    name: str = option("x", help="a name")
    lr: float = option(1e-4, help="learning rate", min=0.0)
    kind: Literal["kl", "vq"] = option("kl", help="regulariser")
    flip: bool = option(True, help="flip")
    seed: int | None = option(None, help="seed")
    inner: Inner = option(default_factory=Inner, help="inner block")


def test_defaults_and_round_trip():
    cfg = from_dict(Outer, {})
    assert cfg == Outer()
    data = to_dict(cfg)
    assert data["inner"]["mult"] == [1, 2]
    assert from_dict(Outer, data) == cfg


def test_nested_values_are_converted():
    cfg = from_dict(Outer, {"lr": 1, "inner": {"mult": [1, 2, 4]}, "seed": 3})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.inner.mult == (1, 2, 4)
    assert cfg.seed == 3


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.chanels'; did you mean 'channels'"):
        from_dict(Outer, {"inner": {"chanels": 3}})


def test_wrong_type_names_key_value_and_expected():
    with pytest.raises(ConfigError, match=r"config key 'lr': got 'fast', expected a number"):
        from_dict(Outer, {"lr": "fast"})
    with pytest.raises(ConfigError, match=r"config key 'flip': got 1, expected true or false"):
        from_dict(Outer, {"flip": 1})
    with pytest.raises(ConfigError, match=r"config key 'inner.channels': got 2.5, expected an integer"):
        from_dict(Outer, {"inner": {"channels": 2.5}})


def test_out_of_range_and_choices():
    with pytest.raises(ConfigError, match=r"'lr': got -1.0, expected a value in \[0, inf\]"):
        from_dict(Outer, {"lr": -1})
    with pytest.raises(ConfigError, match=r"'kind': got 'vae', expected one of 'kl', 'vq'"):
        from_dict(Outer, {"kind": "vae"})
    with pytest.raises(ConfigError, match=r"'inner.mult'"):
        from_dict(Outer, {"inner": {"mult": [1, 0]}})


def test_overrides_parse_yaml_scalars_and_nest():
    data = apply_overrides({"inner": {"channels": 8}}, ["inner.channels=16", "lr=3e-4", "inner.mult=[1,1]", "name=abc"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.channels == 16 and cfg.lr == 3e-4 and cfg.inner.mult == (1, 1) and cfg.name == "abc"
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides({}, ["lr"])


def test_load_config_from_yaml_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("lr: 0.5\ninner:\n  channels: 4\n")
    cfg = load_config(Outer, path, ["kind=vq"])
    assert (cfg.lr, cfg.inner.channels, cfg.kind) == (0.5, 4, "vq")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml line"):
        load_config(Outer, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="no config file or autoencoder preset named 'nope'"):
        load_config(Outer, "nope", group="autoencoder")


def test_registry():
    reg = Registry("sampler")
    reg.register("ddim")(object)
    assert reg.get("ddim") is object
    with pytest.raises(ConfigError, match="unknown sampler 'dim'; did you mean 'ddim'"):
        reg.get("dim")
