import json

import pytest
import torch

from ldmkit.errors import CheckpointError
from ldmkit.io import load_state_strict, load_weights, read_model_dir, save_model_dir


def _net(width=4):
    return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Linear(width, 2))


def test_round_trip(tmp_path):
    net = _net()
    save_model_dir(tmp_path / "m", kind="toy", config={"width": 4}, weights={"model": net}, extra={"scale": 0.5})
    info = read_model_dir(tmp_path / "m", kind="toy")
    assert info.config == {"width": 4} and info.extra == {"scale": 0.5}
    other = _net()
    load_state_strict(other, load_weights(info), "m")
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)
    record = json.loads((tmp_path / "m" / "config.json").read_text())
    assert record["format_version"] == 1 and "model" in record["files"]


def test_overwrite_keeps_a_complete_directory(tmp_path):
    save_model_dir(tmp_path / "m", kind="toy", config={"v": 1}, weights={"model": _net()})
    save_model_dir(tmp_path / "m", kind="toy", config={"v": 2}, weights={"model": _net()})
    assert read_model_dir(tmp_path / "m").config == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_mismatch_messages(tmp_path):
    save_model_dir(tmp_path / "m", kind="toy", config={}, weights={"model": _net(4)})
    state = load_weights(read_model_dir(tmp_path / "m"))
    with pytest.raises(CheckpointError, match=r"mis-shaped 3 \(0.bias \(4,\) vs \(5,\)"):
        load_state_strict(_net(5), state, "m")
    state.pop("1.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing 1 \(1.bias\); unexpected 1 \(extra.weight\)"):
        load_state_strict(_net(4), state, "m")


def test_wrong_kind_missing_dir_and_tampering(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_model_dir(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        read_model_dir(tmp_path / "empty")
    save_model_dir(tmp_path / "m", kind="toy", config={}, weights={"model": _net()})
    with pytest.raises(CheckpointError, match="holds a 'toy' model, expected 'unet'"):
        read_model_dir(tmp_path / "m", kind="unet")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        load_weights(read_model_dir(tmp_path / "m"))
    weights.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        load_weights(read_model_dir(tmp_path / "m"), verify=False)


def test_a_model_is_replaced_with_the_adapters_ldmkit_wrote_but_never_with_other_files(tmp_path):
    from safetensors.torch import save_file

    from ldmkit.io.model_dir import ADAPTER_METADATA

    path = save_model_dir(tmp_path / "model", kind="toy", config={}, weights={"unet": {"w": torch.zeros(2)}})
    (path / "adapters").mkdir()
    save_file({"x": torch.zeros(1)}, str(path / "adapters" / "lora.safetensors"), metadata={ADAPTER_METADATA: "{}"})
    save_model_dir(path, kind="toy", config={}, weights={"unet": {"w": torch.ones(2)}})  # a LoRA run's next save
    assert torch.equal(load_weights(read_model_dir(path), "unet")["w"], torch.ones(2))
    (path / "adapters").mkdir()
    save_file({"x": torch.zeros(1)}, str(path / "adapters" / "mine.safetensors"))  # not written by ldmkit
    with pytest.raises(CheckpointError, match=r"not part of an ldmkit model \(adapters\)"):
        save_model_dir(path, kind="toy", config={}, weights={"unet": {"w": torch.ones(2)}})
    assert (path / "adapters" / "mine.safetensors").is_file()
