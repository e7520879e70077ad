"""A word-level tokenizer built from the training captions (for the text encoder trained from scratch).

Text is lower-cased and split into runs of letters (digits, punctuation and spaces separate words and are
dropped). Words occurring at least ``min_count`` times form the vocabulary, ordered by falling count and
then alphabetically, so the same captions always give the same ids. Every caption becomes
``[BOS] w1 … wn [EOS]``, cut to ``max_length`` tokens and padded with ``[PAD]``; unknown words map to ``[UNK]``.
The vocabulary is plain JSON, saved with the model.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import torch

from ldmkit.errors import CheckpointError, DataError

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIALS = (PAD, UNK, BOS, EOS)
FORMAT = "ldmkit-word-tokenizer"
FORMAT_VERSION = 1

_WORD = re.compile(r"[^\W\d_]+")  # runs of (unicode) letters


def split_words(text: str) -> list[str]:
    """``"A red-kangaroo, 2x!"`` → ``["a", "red", "kangaroo", "x"]``."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps captions to padded id tensors; ids 0–3 are [PAD], [UNK], [BOS], [EOS]."""

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, words: Sequence[str], max_length: int):
        if max_length < 2:
            raise ValueError("max_length must leave room for [BOS] and [EOS]")
        self.tokens: list[str] = list(SPECIALS) + list(words)
        self.index: dict[str, int] = {tok: i for i, tok in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("tokenizer vocabulary has repeated tokens")
        self.max_length = max_length

    @classmethod
    def from_captions(cls, captions: Iterable[str], *, min_count: int = 1, max_vocab: int = 0,
                      max_length: int = 32) -> "WordTokenizer":
        """Build the vocabulary from training captions (deterministic: by count, then alphabetically)."""
        counts: Counter[str] = Counter()
        n = 0
        for caption in captions:
            counts.update(split_words(caption or ""))
            n += 1
        if n == 0:
            raise DataError("text conditioning needs the training captions to build its vocabulary; none were given")
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        if max_vocab:
            words = words[:max_vocab]
        return cls(words, max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Ids of one caption: ``[BOS] w1 … [EOS]``, at most ``max_length`` long (no padding)."""
        ids = [self.index.get(w, self.unk_id) for w in split_words(text or "")]
        ids = ids[: self.max_length - 2]
        return [self.bos_id, *ids, self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Words of ``ids`` joined by spaces, special tokens other than [UNK] left out."""
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return " ".join(self.tokens[i] for i in ids if i not in skip)

    def __call__(self, texts: Sequence[str], device: torch.device | str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids`` [B, T] (long) and ``mask`` [B, T] (bool, True = real token), T = the longest caption."""
        encoded = [self.encode(t) for t in texts]
        longest = max((len(e) for e in encoded), default=2)
        ids = torch.full((len(encoded), longest), self.pad_id, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
        ids = ids.to(device)
        return ids, ids != self.pad_id

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data from which :meth:`from_dict` rebuilds the same tokenizer."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "max_length": self.max_length,
                "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WordTokenizer":
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise CheckpointError(f"saved tokenizer is not an {FORMAT} vocabulary")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"saved tokenizer has format_version {data.get('format_version')}; "
                                  f"this ldmkit reads up to {FORMAT_VERSION}: upgrade ldmkit")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise CheckpointError(f"saved tokenizer vocabulary must start with {', '.join(SPECIALS)}")
        try:
            return cls(tokens[len(SPECIALS):], int(data["max_length"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"saved tokenizer is damaged ({exc})") from None
