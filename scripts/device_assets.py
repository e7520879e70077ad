"""Move fetched assets to a machine without network, within a size limit, and install them there.

``pack NAME… --to DIR`` (here) copies each asset from ``$LDMKIT_HOME``; safetensors weights are stored
as float16 to halve their size (the networks run under bf16 autocast on the GPU anyway).
``unpack DIR`` (there) installs each folder of DIR into ``$LDMKIT_HOME`` with float32 weights and a
fresh manifest, so ``ldmkit.assets.require`` accepts it.

    python scripts/device_assets.py pack lpips fashion-mnist --to .carry
    python scripts/device_assets.py unpack .carry          # on the GPU machine

``--vocabulary-of CAPTIONS.txt`` (one text a line) keeps of a text encoder's word-embedding table (MiniLM:
30,522 rows, half its weights) only the rows those texts and the special tokens use: the encoder then gives the
same states for them at about half the size (MiniLM 45 → 23 MB in fp16). ``unpack`` rebuilds the full table
with NaN in every other row, so a text outside the list gives NaN states, never quietly wrong ones.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ldmkit.assets import asset_dir, require
from ldmkit.assets.store import MANIFEST, build_manifest, write_manifest


def _copy(source: Path, target: Path, dtype: torch.dtype) -> None:
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.name == MANIFEST:
            continue
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_file(path).items()}
            save_file(tensors, out)
        else:
            shutil.copy2(path, out)


WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"  # [vocabulary, width] of BERT-family encoders (MiniLM)
KEPT_ROWS, KEPT_INDEX, FULL_SHAPE = (f"{WORD_EMBEDDINGS}.{part}" for part in ("kept_rows", "kept_index", "shape"))


def trim_vocabulary(folder: Path, texts: list[str]) -> int:
    """Keep only the word-embedding rows that ``folder``'s tokenizer uses for ``texts`` and its special tokens
    (in ``model.safetensors``); the number of rows kept."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    used = {i for text in texts for i in tokenizer(text)["input_ids"]} | set(tokenizer.all_special_ids)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    if WORD_EMBEDDINGS not in tensors:
        raise SystemExit(f"{path} has no {WORD_EMBEDDINGS}: --vocabulary-of applies to BERT-family text encoders")
    table = tensors.pop(WORD_EMBEDDINGS)
    index = torch.tensor(sorted(used), dtype=torch.int64)
    tensors.update({KEPT_ROWS: table[index].contiguous(), KEPT_INDEX: index,
                    FULL_SHAPE: torch.tensor(table.shape, dtype=torch.int64)})
    save_file(tensors, path)
    return len(index)


def restore_vocabulary(path: Path) -> None:
    """The full word-embedding table again, NaN in the rows :func:`trim_vocabulary` left out."""
    tensors = load_file(path)
    if KEPT_ROWS not in tensors:
        return
    rows, index, shape = tensors.pop(KEPT_ROWS), tensors.pop(KEPT_INDEX), tensors.pop(FULL_SHAPE)
    table = torch.full(shape.tolist(), float("nan"), dtype=rows.dtype)
    table[index] = rows
    tensors[WORD_EMBEDDINGS] = table
    save_file(tensors, path)


def pack(names: list[str], to: Path, skip: list[str], vocabulary_of: Path | None = None) -> None:
    texts = vocabulary_of.read_text(encoding="utf-8").splitlines() if vocabulary_of else None
    for name in names:
        source = require(name)
        target = to / name
        shutil.rmtree(target, ignore_errors=True)
        _copy(source, target, torch.float16)
        for pattern in skip:
            for path in target.glob(pattern):
                path.unlink()
        if texts is not None and (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
            kept = trim_vocabulary(target, texts)
            print(f"{name}: kept {kept} word-embedding rows for the {len(texts)} texts of {vocabulary_of}")
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        print(f"{name}: {size / 2**20:.1f} MiB in {target}")


def unpack(folder: Path) -> None:
    for source in sorted(p for p in folder.iterdir() if p.is_dir()):
        target = asset_dir(source.name)
        shutil.rmtree(target, ignore_errors=True)
        _copy(source, target, torch.float32)
        for path in target.rglob("*.safetensors"):
            restore_vocabulary(path)
        write_manifest(target, build_manifest(target, source.name, {"carried": str(source)}))
        print(f"installed {source.name} in {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("names", nargs="+")
    p.add_argument("--to", type=Path, default=Path(".carry"))
    p.add_argument("--skip", nargs="*", default=[], help="glob patterns of files to leave out")
    p.add_argument("--vocabulary-of", type=Path, default=None, metavar="TEXTS",
                   help="keep only the word embeddings these texts use (one a line) in text encoders")
    u = sub.add_parser("unpack")
    u.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.verb == "pack":
        pack(args.names, args.to, args.skip, args.vocabulary_of)
    else:
        unpack(args.folder)


if __name__ == "__main__":
    main()
