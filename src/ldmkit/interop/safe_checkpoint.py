"""Reading ``.ckpt`` / ``.pt`` / ``.bin`` / ``.safetensors`` checkpoints without running their code.

A ``.ckpt`` (PyTorch Lightning) is a zip of a pickle (``data.pkl``) and tensor storages; the pickle may
name any Python callable, and unpickling calls it. PyTorch's own ``torch.load(weights_only=True)`` rebuilds
tensors and plain containers only, but fails on the first other name (a Lightning callback class, a numpy
scalar in the callback state). So we ask torch which names the pickle holds
(``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads the opcodes without executing them)
and map each of them to an inert stand-in class through torch's allowlist (``safe_globals``): the stand-in
accepts any arguments and does nothing, so a callback, an optimiser class or ``builtins.eval`` becomes an
empty object that is dropped and named. Names from the modules torch never allows (``os``, ``posix``,
``sys``, ``nt``) only appear in files made to run code: such a file is refused.

Tensors are memory-mapped (``mmap=True``): a 4 GB checkpoint is read from the page cache as needed, not
copied into memory first.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ldmkit.errors import CheckpointError

_NEVER = ("os", "posix", "nt", "sys", "subprocess", "builtins.exec", "builtins.eval")  # only in code-running files


class Skipped:
    """What an object of a refused class becomes: records its name and ignores every argument and state."""

    name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "Skipped":
        return self


@dataclass
class Checkpoint:
    """The tensors of a checkpoint (its ``state_dict`` when it has one) and what was left out."""

    path: Path
    tensors: dict[str, torch.Tensor]
    skipped: list[str] = field(default_factory=list)  # names of the objects that were not built
    extra: dict[str, Any] = field(default_factory=dict)  # plain top-level entries (global_step, epoch, …)

    def skipped_line(self) -> str | None:
        if not self.skipped:
            return None
        return (f"{self.path.name}: left out {len(self.skipped)} kinds of stored objects, none of them run: "
                + ", ".join(self.skipped))


def _stand_in(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (Skipped,), {"name": name})


def _is_skipped(x: Any) -> bool:
    return isinstance(x, Skipped) or (isinstance(x, type) and issubclass(x, Skipped))


def _drop_skipped(x: Any) -> Any:
    """The tree without stand-ins (keys or values), containers kept."""
    if isinstance(x, dict):
        return {k: _drop_skipped(v) for k, v in x.items() if not _is_skipped(k) and not _is_skipped(v)}
    if isinstance(x, (list, tuple)):
        return type(x)(_drop_skipped(v) for v in x if not _is_skipped(v)) if type(x) in (list, tuple) else x
    return x


def _damaged(path: Path, exc: BaseException) -> CheckpointError:
    reason = str(exc).splitlines()[0].split(". ")[0][:160] if str(exc) else type(exc).__name__
    return CheckpointError(f"{path} is not a readable checkpoint ({reason}); it may be truncated or damaged: "
                           "download it again")


def _globals_in_pickles(path: Path) -> list[str]:
    """Names a non-zip file's pickles import, read from the opcodes (nothing is executed). A legacy torch file is
    a few pickles followed by raw storage bytes: reading stops at the first thing that is not a pickle."""
    names, strings = [], []
    with open(path, "rb") as handle:
        while True:
            try:
                for op, arg, _ in pickletools.genops(handle):
                    if op.name == "GLOBAL":
                        names.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # past the last pickle
                break
    return sorted(set(names))


def _load_pickled(path: Path) -> tuple[Any, list[str]]:
    zipped = zipfile.is_zipfile(path)
    names: list[str] = []
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) if zipped \
            else _globals_in_pickles(path)
    except Exception as exc:  # damaged archive or pickle
        raise _damaged(path, exc) from None
    refused = [n for n in names if n.split(".")[0] in _NEVER or n in _NEVER]
    if refused:
        raise CheckpointError(f"refusing {path}: its pickle calls {', '.join(refused)}, which can run programs; "
                              "nothing was run. Get the weights as .safetensors or from a source you trust")
    try:
        # Stand-ins only for what torch itself names as refused (a zip checkpoint's list leaves out the allowed).
        with torch.serialization.safe_globals([(_stand_in(n), n) for n in names] if zipped else []):
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:  # legacy (non-zip) files are checked by torch as they are read
        lines = [line for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        first = lines[0].strip() if lines else "it holds an object torch refuses to build"
        raise CheckpointError(f"refusing {path}: {first[:200]}; nothing was run. Re-save it as .safetensors "
                              "from a trusted environment") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise _damaged(path, exc) from None
    return obj, names if zipped else []


def _tensor_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict inside a loaded checkpoint: ``obj['state_dict']``, ``obj['model']`` or ``obj`` itself."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dictionary of weights")
    inner = obj
    for key in ("state_dict", "model", "module"):
        if isinstance(obj.get(key), dict):
            inner = obj[key]
            break
    tensors = {k: v for k, v in inner.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:6]))})")
    extra = {k: v for k, v in obj.items() if isinstance(v, (int, float, str)) and isinstance(k, str)}
    return tensors, extra


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Tensors of a single-file checkpoint, read without running any code it may hold."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return Checkpoint(path, load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise _damaged(path, exc) from None
    obj, names = _load_pickled(path)
    obj = _drop_skipped(obj)
    tensors, extra = _tensor_dict(obj, path)
    return Checkpoint(path, tensors, skipped=sorted(names), extra=extra)
