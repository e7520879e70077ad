"""LPIPS: behaviour with random weights, loading rules, and (with the ``lpips`` asset) the published values."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ldmkit.assets import require
from ldmkit.errors import AssetMissingError, ConfigError, DataError
from ldmkit.autoencoders.lpips import LPIPS

# The LPIPS authors' example triplet and its published distances (see the fixture's README).
_FIXTURE_DIRS = (Path(__file__).resolve().parents[1] / "fixtures" / "lpips", Path("/work/shared/fixtures/lpips"))
PUBLISHED = {"alex": (0.722, 0.138), "vgg16": (0.569, 0.422)}


def _images(seed: int, batch: int = 2, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


@pytest.fixture(scope="module")
def lpips_dir() -> Path:
    try:
        return require("lpips")
    except AssetMissingError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def published(lpips_dir) -> dict[str, LPIPS]:
    """The published models, loaded once per module."""
    return {net: LPIPS.from_assets(net) for net in ("alex", "vgg16")}


@pytest.fixture(scope="module")
def triplet() -> dict[str, torch.Tensor]:
    from PIL import Image

    folder = next((d for d in _FIXTURE_DIRS if (d / "ex_ref.png").is_file()), None)
    if folder is None:
        pytest.skip("LPIPS example images (tests/fixtures/lpips) are not present")

    def load(name: str) -> torch.Tensor:
        array = np.asarray(Image.open(folder / f"{name}.png").convert("RGB"), dtype=np.float32)
        return torch.from_numpy(array / 127.5 - 1).permute(2, 0, 1)[None]  # [1, 3, H, W] in [-1, 1]

    return {name: load(name) for name in ("ex_ref", "ex_p0", "ex_p1")}


# --- random weights --------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["alex", "vgg16"])
def test_shapes_zero_on_identical_and_frozen(net):
    model = LPIPS(net)
    x, y = _images(0), _images(1)
    d = model(x, y)
    assert d.shape == (2,) and torch.all(d > 0)
    assert torch.allclose(model(x, x), torch.zeros(2), atol=1e-7)
    assert all(not p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training


def test_gradients_reach_inputs_only():
    model = LPIPS("alex")
    x = _images(2).requires_grad_(True)
    model(x, _images(3)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_keys_follow_torchvision_features_and_lin_heads():
    alex = LPIPS("alex").state_dict()
    assert sorted(k for k in alex if k.endswith("weight") and k.startswith("features")) == [
        f"features.{i}.weight" for i in (0, 10, 3, 6, 8)]
    assert [tuple(alex[f"lin{k}.weight"].shape) for k in range(5)] == [(1, c, 1, 1) for c in (64, 192, 384, 256, 256)]
    vgg = LPIPS("vgg16").state_dict()
    convs = sorted(int(k.split(".")[1]) for k in vgg if k.startswith("features") and k.endswith("weight"))
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert "shift" not in vgg and "scale" not in vgg  # constants, not weights


def test_user_mistakes_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="use vgg16 or alex"):
        LPIPS("resnet")
    model = LPIPS("alex")
    with pytest.raises(DataError, match="at least 32 px"):
        model(_images(0, size=16), _images(1, size=16))
    with pytest.raises(DataError, match="one shape"):
        model(_images(0), _images(1, batch=3))
    monkeypatch.setenv("LDMKIT_HOME", str(tmp_path))
    with pytest.raises(AssetMissingError, match="ldm assets fetch lpips"):
        LPIPS.from_assets("vgg16")


def test_from_files_reads_torchvision_and_lpips_layouts(tmp_path):
    source = LPIPS("alex")
    state = source.state_dict()
    backbone = {k: v for k, v in state.items() if k.startswith("features.")}
    backbone["classifier.1.weight"] = torch.zeros(4, 9216)  # torchvision files also hold the classifier
    heads = {f"lin{k}.model.1.weight": state[f"lin{k}.weight"] for k in range(5)}  # the lpips package's names
    torch.save(backbone, tmp_path / "alexnet-owt.pth")
    torch.save(heads, tmp_path / "alex.pth")
    loaded = LPIPS.from_files("alexnet", tmp_path / "alexnet-owt.pth", tmp_path / "alex.pth")
    x, y = _images(4), _images(5)
    assert torch.equal(loaded(x, y), source(x, y))


# --- published weights ---------------------------------------------------------------------------


@pytest.mark.assets
@pytest.mark.parametrize("net", ["alex", "vgg16"])
def test_published_weights_zero_and_monotone_in_noise(published, triplet, net):
    model = published[net]
    ref = triplet["ex_ref"]
    assert model(ref, ref).item() == pytest.approx(0.0, abs=1e-6)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(ref.shape, generator=generator)
    levels = (0.03, 0.1, 0.3)
    noisy = torch.cat([(ref + s * noise).clamp(-1, 1) for s in levels])
    d = model(ref.expand_as(noisy), noisy)
    assert torch.all(d[1:] > d[:-1]), d


@pytest.mark.assets
@pytest.mark.parametrize("net", ["alex", "vgg16"])
def test_published_distances_on_the_example_triplet(published, triplet, net):
    model = published[net]
    ref = triplet["ex_ref"].expand(2, -1, -1, -1)
    d = model(ref, torch.cat([triplet["ex_p0"], triplet["ex_p1"]]))
    assert d.tolist() == pytest.approx(PUBLISHED[net], abs=5e-4)


def _reference_lpips_float64(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS-VGG16 written out with functional ops in float64, straight from the weight file."""
    w = {k: v.double() for k, v in state.items()}
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    blocks = [(0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)]

    def taps(img):
        h, out = (img.double() - shift) / scale, []
        for b, block in enumerate(blocks):
            if b:
                h = F.max_pool2d(h, 2)
            for i in block:
                h = F.relu(F.conv2d(h, w[f"features.{i}.weight"], w[f"features.{i}.bias"], padding=1))
            out.append(h)
        return out

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        total += ((a - b) ** 2 * w[f"lin{k}.weight"]).sum(dim=1).mean(dim=(1, 2))
    return total


@pytest.mark.assets
def test_vgg16_matches_a_float64_reference(lpips_dir, published):
    model = published["vgg16"]
    x, y = _images(10, size=32), _images(11, size=32)
    expected = _reference_lpips_float64(load_file(str(lpips_dir / "vgg16.safetensors")), x, y)
    got = model(x, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
