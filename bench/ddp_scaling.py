"""Data-parallel training throughput of ldmkit's UNet at 1, 2, … processes (one GPU each).

Every process joins the group, wraps the UNet exactly as ``ldm train --gpus N`` does
(``ldmkit.training.distributed``: ``process_group``, ``local_device``, ``wrap``) and times the same
training step as the single-GPU benchmark; rank 0 writes the median step time. Launched with
``torch.multiprocessing.spawn`` from :func:`measure_world`, so the benchmark needs no ``torchrun``.

Every world size, one process included, runs in fresh processes: the parent never touches a GPU, so no cached
memory of an earlier measurement sits on GPU 0 (it once left rank 0 out of memory while rank 1 waited), and a
worker's error comes back as the measurement's error instead of a hang.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from ldmkit.training.distributed import local_device, process_group, wrap


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, spec: dict[str, Any], result_path: str) -> None:
    try:
        _measure(rank, world, port, spec, result_path)
    except Exception as exc:
        Path(f"{result_path}.rank{rank}.error").write_text(f"rank {rank}: {type(exc).__name__}: {str(exc)[:300]}")
        raise


def _measure(rank: int, world: int, port: int, spec: dict[str, Any], result_path: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from measure import median_seconds  # the bench directory is on sys.path of spawned processes too
    from models import build_unet, text_unet_config, unet_call
    from train_step import make_train_step

    device = torch.device(spec["device"])
    device = local_device(device)
    with process_group(device):
        torch.manual_seed(rank)
        cfg = text_unet_config(spec["tiny"])
        net = build_unet("ldmkit", cfg, device)
        if spec["channels_last"]:
            net = net.to(memory_format=torch.channels_last)
        model = wrap(net, device)
        step = make_train_step(unet_call("ldmkit", model), net.parameters(), cfg, spec["size"], spec["batch"],
                               spec["tokens"], device, channels_last=spec["channels_last"])
        seconds = median_seconds(step, device, warmup=spec["warmup"], iters=spec["iters"])
        if rank == 0:
            Path(result_path).write_text(json.dumps({"step_s": seconds}))


def _errors(path: str) -> str:
    return "; ".join(p.read_text() for p in sorted(Path(path).parent.glob("*.error")))


def _spawn(world: int, spec: dict[str, Any], path: str) -> None:
    """Run ``world`` workers; a run that hangs (a collective that never completes) fails after
    ``spec["timeout_s"]`` instead of taking the whole benchmark call with it."""
    context = mp.start_processes(_worker, args=(world, _free_port(), spec, path), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + spec.get("timeout_s", 300)
    try:
        while not context.join(timeout=2):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"{world} processes did not finish within {spec.get('timeout_s', 300)} s"
                                   + (f" ({_errors(path)})" if _errors(path) else ""))
    except mp.ProcessRaisedException as exc:
        raise RuntimeError(_errors(path) or str(exc).strip().splitlines()[-1]) from None


def measure_world(world: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Median step time and images/s over all ranks of a ``world``-process run of the training step."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rank0.json")
        _spawn(world, spec, path)
        step_s = json.loads(Path(path).read_text())["step_s"]
    return {"world_size": world, "batch_per_rank": spec["batch"], "step_ms": step_s * 1e3,
            "img_s": world * spec["batch"] / step_s}
