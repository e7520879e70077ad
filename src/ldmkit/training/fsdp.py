"""Fully sharded data parallelism (``train.parallel=fsdp``): PyTorch's ``fully_shard`` ("FSDP2") for large UNets.

Under DDP every process holds the whole network, its gradients, both AdamW moments and the EMA: about
20 bytes per parameter in fp32. ``fully_shard`` splits each parameter into one shard per process (a
``DTensor`` sharded on dim 0). A unit's full weights exist only while it runs: they are all-gathered just
before its forward (and again for its backward) and freed after, its gradients are reduce-scattered, and
the optimiser updates only the local shard. The units are the UNet's stages (a residual block with its
attention or transformer block, a down- or up-sampler), then the root, which keeps what is left (time
embedding, input and output convolutions, a jointly trained conditioner).

Checkpoints and model directories stay in the single-process format: full state dicts are gathered onto
rank 0 (``torch.distributed.checkpoint.state_dict`` with ``full_state_dict=True, cpu_offload=True``) and
scattered back into shards on resume, so a run can move between DDP, FSDP and one process.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ldmkit.denoisers.unet import UNetStage
from ldmkit.errors import CheckpointError
from ldmkit.io.model_dir import load_state_strict
from ldmkit.training.ema import EMA

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)  # full tensors, on rank 0's CPU only
_SCATTER = StateDictOptions(full_state_dict=True)  # every rank passes the full state; each keeps its shard

# Unsharded module → a copy of it on the meta device (structure, no memory), recorded before sharding. The EMA
# and the resume checks need the plain module classes, which sharding replaces (and which refuse deepcopy).
_TEMPLATES: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a shard (a ``DTensor``) rather than a full tensor."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def _meta_copy(module: nn.Module) -> tuple[nn.Module, dict[int, Any]]:
    """A deep copy of ``module`` whose parameters and buffers live on the meta device; also deepcopy's memo,
    which maps the id of every original submodule to its copy."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo), memo


def plain_template(module: nn.Module) -> nn.Module:
    """A fresh meta-device copy of ``module`` as it was before :func:`shard` (its original classes)."""
    template = _TEMPLATES.get(module)
    if template is None:
        raise RuntimeError("this module was not sharded by ldmkit.training.fsdp.shard; no plain template of it")
    return copy.deepcopy(template)


def shard(module: nn.Module, device: torch.device, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard ``module`` over all processes in place (rank 0's weights): each UNet stage inside it is one unit,
    then the root.

    ``param_dtype`` (bf16 under the default GPU precision, None for fp32) is the dtype the gathered weights
    are computed in; the shards, the optimiser state and the gradient reduction stay fp32. Channels-last
    weights become contiguous (activations keep their memory format).
    """
    with torch.no_grad():
        for p in module.parameters():  # fully_shard takes contiguous tensors only (not channels-last weights)
            if not p.is_contiguous():
                p.data = p.data.contiguous()
        for tensor in [*module.parameters(), *module.buffers()]:  # the same starting weights everywhere, as DDP
            dist.broadcast(tensor, src=0)
    for child in module.children():  # children only: the root may hold a compiled alias of its network
        _, memo = _meta_copy(child)
        for sub in child.modules():
            _TEMPLATES[sub] = memo[id(sub)]
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for unit in module.modules():
        if isinstance(unit, UNetStage):
            fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    # The root's weights are needed again as soon as backward starts: keep them gathered after forward.
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return module


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a sharded ``module`` on rank 0's CPU, ``{}`` elsewhere. Every rank must call it."""
    return get_model_state_dict(module, options=_GATHER)


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                         template: nn.Module | None = None) -> None:
    """Load a full (single-process format) state dict into a sharded ``module``; every rank passes it whole.

    Missing, unexpected or mis-shaped keys fail as in single-process training: the check runs against the
    module's meta-device ``template`` (no memory).
    """
    with warnings.catch_warnings():  # loading into meta tensors only checks: torch warns that it copies nothing
        warnings.filterwarnings("ignore", message=".*meta parameter.*")
        load_state_strict(template if template is not None else plain_template(module), state, source)
    set_model_state_dict(module, dict(state), options=_SCATTER)  # (it replaces the values of the dict it gets)


def _parameter_names(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name in ``module`` of each parameter of ``optimizer``, in the order ``optimizer.state_dict()`` numbers
    them (group by group)."""
    names = {p: name for name, p in module.named_parameters()}
    try:
        return [names[p] for group in optimizer.param_groups for p in group["params"]]
    except KeyError:
        raise RuntimeError("the optimiser updates parameters outside the module given with it") from None


def full_optimizer_state_dict(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as one process would write it (parameters numbered 0, 1, …, full tensors),
    gathered onto rank 0's CPU from the shards; ``{}`` on other ranks. Every rank must call it."""
    gathered = get_optimizer_state_dict(module, optimizer, options=_GATHER)  # keyed by parameter name
    if not gathered:
        return {}
    index = {name: i for i, name in enumerate(_parameter_names(module, optimizer))}
    return {
        "state": {index[name]: value for name, value in gathered["state"].items()},
        "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                         for group in gathered["param_groups"]],
    }


def load_full_optimizer_state_dict(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                                   source: str) -> None:
    """Load a single-process ``optimizer.state_dict()`` (from a DDP, FSDP or one-process checkpoint) into the
    optimiser of a sharded ``module``; every rank passes it whole."""
    names = _parameter_names(module, optimizer)
    sizes = [len(group["params"]) for group in state["param_groups"]]
    if sizes != [len(group["params"]) for group in optimizer.param_groups]:
        raise CheckpointError(f"the optimiser state in {source} has parameter groups of sizes {sizes}, this "
                              f"model {[len(g['params']) for g in optimizer.param_groups]}; it was written by "
                              "another model configuration")
    by_name = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                         for group in state["param_groups"]],
    }
    set_optimizer_state_dict(module, optimizer, by_name, options=_SCATTER)


def _replace(root: nn.Module, name: str, tensor: torch.Tensor, kind: str) -> None:
    owner, _, leaf = name.rpartition(".")
    getattr(root.get_submodule(owner), kind)[leaf] = tensor


class ShardedEMA(EMA):
    """The EMA of a sharded network, kept sharded: each rank averages its own shard of every parameter.

    Memory and traffic stay bounded: 1/N of a full EMA per rank and no communication per step (a full EMA
    on rank 0 would need all weights gathered every step and a whole fp32 copy on one device). The full EMA
    is gathered only when it is read whole: inside :meth:`gathered`, where rank 0's ``model`` is an ordinary
    module for writing the model directory or sampling previews, and for checkpoints (:meth:`state_dict`,
    which reuses that gathering when called inside it).

    ``model`` is, outside :meth:`gathered`, a plain copy of the network whose parameters are the EMA shards
    (``DTensor``); its ``state_dict()`` keys are those of the unsharded network.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self._template = plain_template(model)
        shards = copy.deepcopy(self._template)
        copies: dict[int, torch.Tensor] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) not in copies:
                copies[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=False)
            _replace(shards, name, copies[id(p)], "_parameters")
        for name, b in model.named_buffers(remove_duplicate=False):
            _replace(shards, name, b.detach().clone(), "_buffers")
        own = [name for name, _ in shards.named_parameters()]
        if own != [name for name, _ in model.named_parameters()]:
            raise RuntimeError("the EMA copy does not list the parameters in the network's order")
        self._shards = shards.eval()
        self.model = self._shards
        self._full: dict[str, torch.Tensor] | None = None  # the gathered weights, inside gathered()

    def update(self, model: nn.Module) -> None:
        if self.model is not self._shards:
            raise RuntimeError("ShardedEMA.update inside gathered(): leave the context first")
        super().update(model)

    def state_dict(self) -> dict:
        """The EMA as one process would save it (full weights), on rank 0; every rank must call it."""
        weights = self._full if self._full is not None else full_state_dict(self._shards)
        return {"decay": self.decay, "updates": self.updates, "weights": weights}

    def load_state_dict(self, state: dict) -> None:
        """Load a single-process EMA state (every rank passes it whole) into the shards."""
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        load_full_state_dict(self._shards, state["weights"], "the checkpoint's EMA", template=self._template)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[nn.Module]:
        """Every rank enters; inside, rank 0's ``model`` is an ordinary module holding the full EMA weights on
        the training device (other ranks keep the shards). Yields ``model``."""
        self._full = full_state_dict(self._shards)  # {} on ranks other than 0
        try:
            if self._full:
                device = next(self._shards.parameters()).device
                model = copy.deepcopy(self._template).to_empty(device=device)
                for name, b in self._shards.named_buffers():  # non-persistent buffers are not in the state dict
                    _replace(model, name, b.detach().clone(), "_buffers")
                model.load_state_dict(self._full, strict=True)
                self.model = model.eval().requires_grad_(False)
            yield self.model
        finally:
            self.model, self._full = self._shards, None


__all__ = ["ShardedEMA", "full_optimizer_state_dict", "full_state_dict", "is_sharded",
           "load_full_optimizer_state_dict", "load_full_state_dict", "plain_template", "shard"]
