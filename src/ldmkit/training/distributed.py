"""Data-parallel training over several processes (``torchrun``): process group, DDP or FSDP wrapping, agreement,
and checkpoint state in the single-process format whatever the wrapping.

Every process runs the same loop on its own share of the data (``ldmkit.data.build_dataloader`` shards by
``RANK``/``WORLD_SIZE``); DistributedDataParallel averages gradients during ``backward``, or, with
``train.parallel=fsdp``, ``fully_shard`` shards the weights (:mod:`ldmkit.training.fsdp`). Everything here is
a no-op with one process, so single-device training takes exactly the code path it always did.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ldmkit.io.model_dir import load_state_strict
from ldmkit.runtime import local_rank, rank, world_size
from ldmkit.training.ema import EMA

# A checkpoint written by rank 0 keeps the others waiting in their next collective: allow for slow disks.
_TIMEOUT = datetime.timedelta(minutes=30)
DIGEST_ENV = "LDMKIT_DEBUG_DIGEST_DIR"


def is_distributed() -> bool:
    """Whether this process is one of several of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join the process group of a ``torchrun`` launch when ``WORLD_SIZE > 1`` (NCCL on CUDA devices, Gloo
    otherwise) and leave it at the end; with one process nothing happens."""
    if world_size() <= 1 or is_distributed():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=_TIMEOUT, **kwargs)
    failed = False
    try:
        yield
    except Exception:
        failed = True
        raise
    finally:  # a graceful leave also after Preempted (SystemExit): every rank stopped at the same step
        if failed:
            _abandon_group()
        else:
            _leave_group()


def _leave_group() -> None:
    """Leave the process group together: wait until every rank is done (rank 0 may still be writing the
    model), then destroy it. The group itself dies with the last wrapper holding it (see
    :func:`release_wrappers`)."""
    dist.barrier()
    dist.destroy_process_group()


def release_wrappers() -> None:
    """Free unreachable DDP wrappers, and with them the process group they hold, while the interpreter is whole.

    Left to interpreter shutdown, a Gloo group's worker threads can no longer take the GIL to free the tensors
    they hold, and a process that trained successfully aborts (``terminate called without an active
    exception``). The command line calls this after every command; with one process nothing happens.
    """
    if world_size() > 1:
        gc.collect()


def _abandon_group() -> None:
    """Leave the process group after an error on this rank without waiting for the others.

    A graceful NCCL destroy waits for collectives in flight, which peers still inside the step (waiting for this
    rank) never finish: the failing rank would hang instead of exiting, and ``torchrun`` only tears the job down
    once a rank exits. Aborting the communicators lets the error end the whole job at once.
    """
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if dist.get_backend() == "nccl" and abort is not None:
        abort()
    else:  # Gloo's destroy returns with peers blocked in a collective
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """The accelerator of this process's ``LOCAL_RANK`` when several processes share a machine (``cuda`` →
    ``cuda:LOCAL_RANK``), made the current one; CPU and explicit indices are kept."""
    if world_size() <= 1 or device.type == "cpu":
        return device
    if device.index is None:
        device = torch.device(device.type, local_rank())
    torch.accelerator.set_device_index(device.index)
    return device


def wrap(module: nn.Module, device: torch.device, *, parallel: str = "ddp",
         param_dtype: torch.dtype | None = None, **kwargs) -> nn.Module:
    """``module`` made data-parallel when training on several processes, else ``module`` itself.

    Both broadcast rank 0's parameters and buffers first, so every rank starts from the same weights.
    ``parallel="ddp"``: inside DistributedDataParallel (``kwargs`` go to it). ``parallel="fsdp"``: sharded in
    place with ``fully_shard`` (see :mod:`ldmkit.training.fsdp`), computing in ``param_dtype`` (None: fp32).
    """
    if not is_distributed():
        return module
    if parallel == "fsdp":
        from ldmkit.training.fsdp import shard

        return shard(module, device, param_dtype)
    ids = [device.index] if device.type != "cpu" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, **kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DDP (or ``torch.compile``) wrapper; state-dict keys then carry no prefix."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are sharded over the ranks (``train.parallel=fsdp``)."""
    if not is_distributed():
        return False
    from ldmkit.training.fsdp import is_sharded as sharded

    return sharded(unwrap(module))


def module_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The single-process state dict of ``module`` (no wrapper prefixes). Sharded modules are gathered onto
    rank 0 (other ranks get ``{}``), so every rank must call this for them."""
    if is_sharded(module):
        from ldmkit.training.fsdp import full_state_dict

        return full_state_dict(unwrap(module))
    return unwrap(module).state_dict()


def load_module_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a single-process state dict into ``module``, sharded or not (every rank passes it whole); a state
    that does not fit fails naming the keys and shapes that differ."""
    if is_sharded(module):
        from ldmkit.training.fsdp import load_full_state_dict

        load_full_state_dict(unwrap(module), state, source)
    else:
        load_state_strict(unwrap(module), state, source)


def _owner(optimizer: torch.optim.Optimizer, modules: Mapping[str, nn.Module]) -> nn.Module | None:
    """The sharded module among ``modules`` whose parameters ``optimizer`` updates, if any."""
    first = next((p for group in optimizer.param_groups for p in group["params"]), None)
    for module in modules.values():
        if is_sharded(module) and any(p is first for p in module.parameters()):
            return unwrap(module)
    return None


def optimizer_state_dict(optimizer: torch.optim.Optimizer, modules: Mapping[str, nn.Module]) -> dict[str, Any]:
    """``optimizer.state_dict()``; for the optimiser of a sharded module among ``modules``, the same format
    gathered onto rank 0 (``{}`` elsewhere: every rank must call this)."""
    owner = _owner(optimizer, modules)
    if owner is None:
        return optimizer.state_dict()
    from ldmkit.training.fsdp import full_optimizer_state_dict

    return full_optimizer_state_dict(owner, optimizer)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         modules: Mapping[str, nn.Module], source: str) -> None:
    """``optimizer.load_state_dict(state)``, scattering the state into shards for a sharded module's optimiser."""
    owner = _owner(optimizer, modules)
    if owner is None:
        optimizer.load_state_dict(state)
        return
    from ldmkit.training.fsdp import load_full_optimizer_state_dict

    load_full_optimizer_state_dict(owner, optimizer, state, source)


def ema_of(module: nn.Module, decay: float) -> EMA:
    """An EMA of ``module``'s weights: a full copy, or for a sharded module one sharded like it."""
    if is_sharded(module):
        from ldmkit.training.fsdp import ShardedEMA

        return ShardedEMA(unwrap(module), decay=decay)
    return EMA(module, decay=decay)


def gathered(ema: EMA) -> contextlib.AbstractContextManager:
    """Enter on every rank around rank 0's use of ``ema.model`` as a whole network (model directory, previews):
    a sharded EMA is gathered there; otherwise nothing happens."""
    return ema.gathered() if hasattr(ema, "gathered") else contextlib.nullcontext()


@contextlib.contextmanager
def no_sync(*modules: nn.Module) -> Iterator[None]:
    """Keep DistributedDataParallel from averaging gradients during the backward passes inside (a micro-batch
    that does not end its update, ``train.accumulate``); the next backward outside averages the sums.

    Modules that are not DDP-wrapped (one process, or sharded with FSDP) average every backward as before:
    averaging is linear, so the update is the same, only the communication is repeated.
    """
    with contextlib.ExitStack() as stack:
        for module in modules:
            if isinstance(module, nn.parallel.DistributedDataParallel):
                stack.enter_context(module.no_sync())
        yield


def average_gradients_of(params: list[nn.Parameter]) -> None:
    """Average the gradients of parameters outside any DDP wrapper over all ranks as ``backward`` computes them."""
    if not is_distributed():
        return
    size = dist.get_world_size()

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad / size

    for p in params:
        if p.requires_grad:
            p.register_hook(hook)


def any_rank(*flags: bool, device: torch.device) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks (one small all-reduce), so every rank takes the same decision."""
    if not is_distributed():
        return tuple(bool(f) for f in flags)
    values = torch.tensor([float(bool(f)) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in values.tolist())


def same_on_all_ranks(value: int, device: torch.device) -> bool:
    """Whether every rank holds the same integer ``value``."""
    if not is_distributed():
        return True
    values = torch.tensor([value, -value], device=device, dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values[0].item() == value and -values[1].item() == value


def rank_seed(seed: int, at_step: int) -> int:
    """Seed of this rank's noise, timesteps and dropout from step ``at_step`` on (distinct per rank)."""
    return seed + 1_000_003 * rank() + 7_919 * at_step


def write_digest(modules: dict[str, nn.Module]) -> None:
    """Debugging aid: with ``LDMKIT_DEBUG_DIGEST_DIR`` set, write ``rank-N.json`` holding the SHA-256 of each
    module's weights, so a test can check that every rank ended with identical networks."""
    directory = os.environ.get(DIGEST_ENV)
    if not directory:
        return
    digests = {}
    for name, module in modules.items():
        h = hashlib.sha256()
        for key, tensor in sorted(unwrap(module).state_dict().items()):
            if hasattr(tensor, "full_tensor"):  # a shard (DTensor): every rank gathers the whole tensor
                tensor = tensor.full_tensor()
            h.update(key.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        digests[name] = h.hexdigest()
    path = Path(directory) / f"rank-{rank()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(digests, indent=1, sort_keys=True))


__all__ = ["any_rank", "average_gradients_of", "ema_of", "gathered", "is_distributed", "is_sharded",
           "load_module_state", "load_optimizer_state", "local_device", "module_state_dict", "no_sync",
           "optimizer_state_dict", "process_group", "rank_seed", "release_wrappers", "same_on_all_ranks", "unwrap", "wrap", "write_digest"]
