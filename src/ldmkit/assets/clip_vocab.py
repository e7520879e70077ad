"""The CLIP BPE vocabulary (OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, shipped inside open-clip-torch's wheel),
written as the ``vocab.json`` + ``merges.txt`` pair a Hugging Face ``CLIPTokenizer`` reads.

Both CLIP ViT-L/14 (Stable Diffusion 1.x) and OpenCLIP ViT-H/14 (2.x) tokenise with this vocabulary. The
wheel is downloaded with ``pip download --no-deps`` and never installed: open_clip itself needs a torchvision
that matches the installed torch, which this tokenizer does not.
"""

from __future__ import annotations

import gzip
import json

from ldmkit.assets.clients import AssetFetchError, FetchContext, pip_download, read_member

OPEN_CLIP = "open-clip-torch==3.3.0"
_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408  # 256 bytes × 2 (with and without </w>) + 48,894 merges + <|startoftext|>, <|endoftext|>


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table, in the order CLIP's vocabulary lists them."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def vocab_from_bpe(bpe_text: str) -> tuple[dict[str, int], list[str]]:
    """(token → id, merges as "a b" lines) from the text of ``bpe_simple_vocab_16e6.txt``."""
    merges = bpe_text.split("\n")[1:VOCAB_SIZE - 256 * 2 - 2 + 1]  # the first line is a version header
    pieces = list(bytes_to_unicode().values())
    tokens = pieces + [p + "</w>" for p in pieces] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_vocab(ctx: FetchContext) -> None:
    wheel = pip_download(ctx, OPEN_CLIP)
    vocab, merges = vocab_from_bpe(gzip.decompress(read_member(wheel, _MEMBER)).decode("utf-8"))
    if len(vocab) != VOCAB_SIZE:
        raise AssetFetchError(f"{_MEMBER} gave {len(vocab)} tokens, expected {VOCAB_SIZE}")
    (ctx.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (ctx.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    ctx.say(f"wrote vocab.json ({len(vocab)} tokens) and merges.txt ({len(merges)} merges)")
