"""One shard of a latent cache: a safetensors file written atomically, its record, and reading rows of it.

A shard holds ``N`` rows::

    mean          [N, c, h, w]  scaled posterior mean (any float dtype)
    std           [N, c, h, w]  posterior std (KL autoencoders only)
    label         [N]           int64, -1 without a label
    caption_utf8  [B]           uint8, the captions' UTF-8 bytes one after another
    caption_end   [N]           int64, end of caption i in caption_utf8 (caption i starts at caption_end[i-1])
    geometry      [N, 6]        int64, original (h, w), crop (top, left) and encoded image (h, w) in pixels, where
                                the source records them (image folders; for size conditioning)

Rows are read with positioned reads of the bytes of one row (:class:`ShardFiles`), never by loading a shard:
what a reader holds is a row and a bounded number of open files, whatever the size of the cache. The header
(the safetensors JSON before the data) is parsed here rather than through ``safe_open`` so that a truncated
file is seen from its size alone, and no file is memory-mapped (mapped pages would count as the reader's RSS).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ldmkit.errors import DataError

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}
REDO = "delete it and rerun `ldm encode` with the same arguments to encode that shard again"


@dataclass(frozen=True)
class Tensor:
    """Where one tensor of a shard lies: absolute byte offset of its data, dtype and shape."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n * self.dtype.itemsize


def read_header(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file; :class:`DataError` naming the file if it is not whole."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < n <= min(size - 8, 100 << 20):
                raise ValueError("no safetensors header")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable latent shard ({exc}); {REDO}") from None
    tensors, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry.get("dtype") not in DTYPES:
            raise DataError(f"{path} holds {name} as {entry.get('dtype')}, not a dtype of latent shards; {REDO}")
        begin, stop = entry["data_offsets"]
        tensors[name] = Tensor(8 + n + begin, DTYPES[entry["dtype"]], tuple(entry["shape"]))
        end = max(end, stop)
    if 8 + n + end != size:
        raise DataError(f"{path} is {size} bytes but its header describes {8 + n + end} (truncated?); {REDO}")
    return tensors


def shard_rows(path: Path, tensors: dict[str, Tensor]) -> int:
    """Rows of a shard, after checking that every row-wise tensor has as many."""
    if "label" not in tensors:
        raise DataError(f"{path} has no label tensor: it is not a latent shard; {REDO}")
    rows = tensors["label"].shape[0]
    for name in ("mean", "std", "caption_end", "geometry"):
        if name in tensors and (not tensors[name].shape or tensors[name].shape[0] != rows):
            raise DataError(f"{path} has {rows} labels but {name} of shape {list(tensors[name].shape)}; {REDO}")
    return rows


def pack_captions(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (caption_utf8 [B] uint8, caption_end [N] int64)."""
    encoded = [c.encode("utf-8") for c in captions]
    ends = torch.tensor([len(e) for e in encoded], dtype=torch.int64).cumsum(0) if encoded else \
        torch.zeros(0, dtype=torch.int64)
    blob = torch.frombuffer(bytearray(b"".join(encoded)), dtype=torch.uint8) if any(encoded) else \
        torch.zeros(0, dtype=torch.uint8)
    return blob, ends


def write_shard(path: Path, tensors: dict[str, torch.Tensor], captions: list[str]) -> dict[str, Any]:
    """Write a shard atomically (a reader never sees half a file); returns its record: rows, bytes, SHA-256."""
    blob, ends = pack_captions(captions)
    tensors = {**{k: v.contiguous() for k, v in tensors.items()}, "caption_utf8": blob, "caption_end": ends}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    digest = hashlib.sha256()
    with open(tmp, "rb+") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"rows": int(tensors["label"].shape[0]), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def check_shard(path: Path, record: dict[str, Any]) -> dict[str, Tensor]:
    """The cheap check of a finished shard against its record: file size, then rows in its header."""
    try:
        size = path.stat().st_size
    except OSError:
        raise DataError(f"{path} is missing; rerun `ldm encode` with the same arguments to encode it again") from None
    if size != record["bytes"]:
        raise DataError(f"{path} is {size} bytes but was {record['bytes']} when written (truncated or replaced); "
                        f"{REDO}")
    tensors = read_header(path)
    if shard_rows(path, tensors) != record["rows"]:
        raise DataError(f"{path} holds another number of rows than recorded ({record['rows']}); {REDO}")
    return tensors


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ShardFiles:
    """Positioned reads from shard files, keeping at most ``max_open`` of them open (least recently used out).

    Open files belong to the process that opened them: a forked data-loader worker opens its own, and pickling
    (spawned workers) carries none.
    """

    def __init__(self, paths: list[Path], max_open: int = 32):
        self.paths, self.max_open = paths, max(1, max_open)
        self._open: OrderedDict[int, int] = OrderedDict()  # shard -> file descriptor
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "max_open": self.max_open}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"], state["max_open"])

    def _fd(self, s: int) -> int:
        if self._pid != os.getpid():  # inherited through fork: the parent keeps its own
            self._open, self._pid = OrderedDict(), os.getpid()
        fd = self._open.get(s)
        if fd is None:
            if len(self._open) >= self.max_open:
                os.close(self._open.popitem(last=False)[1])
            fd = self._open[s] = os.open(self.paths[s], os.O_RDONLY | getattr(os, "O_BINARY", 0))
        else:
            self._open.move_to_end(s)
        return fd

    def read(self, s: int, offset: int, nbytes: int) -> bytearray:
        """``nbytes`` bytes of shard ``s`` from ``offset``."""
        fd = self._fd(s)
        data = bytearray(nbytes)
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [data], offset)  # straight into the buffer the tensor will use
        else:  # no preadv (Windows): this process's descriptor, so seeking is safe
            os.lseek(fd, offset, os.SEEK_SET)
            chunk = os.read(fd, nbytes)
            got, data[: len(chunk)] = len(chunk), chunk
        if got != nbytes:
            raise DataError(f"{self.paths[s]} ended early (truncated while in use?); {REDO}")
        return data

    def rows(self, s: int, tensor: Tensor, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of ``tensor`` of shard ``s``: [stop - start, *shape[1:]]."""
        shape = (stop - start, *tensor.shape[1:])
        if stop <= start:
            return torch.empty(shape, dtype=tensor.dtype)
        data = self.read(s, tensor.offset + start * tensor.row_bytes, (stop - start) * tensor.row_bytes)
        return torch.frombuffer(data, dtype=tensor.dtype).reshape(shape)

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._open.values():
                os.close(fd)
        self._open.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
