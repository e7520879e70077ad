"""What the benchmark scripts share: timing, peak memory, a time-budgeted runner and the report files.

Timing: warm-up calls first, then the median of ``iters`` timed calls; on CUDA each call is timed with
CUDA events (device time, free of host timer jitter), elsewhere with ``time.perf_counter``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, *, warmup: int = 3, iters: int = 10) -> float:
    """Median wall time of ``fn()`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def first_call_seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call, synchronised (the compile time of a freshly compiled function)."""
    synchronize(device)
    began = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - began


def first_call(fn: Callable[[], Any], device: torch.device, *, compiled: bool = False) -> dict[str, float | None]:
    """Call ``fn`` once, timed (a fresh compiled function compiles here), and then reset the peak-memory counter,
    so that a peak read afterwards is the steady state every later call sees. The first call of each new shape
    also runs cuDNN's algorithm search (``benchmark=True``), whose trial workspaces only the first side to meet
    the shape pays: 1.6 GB for the SD VAE decoder at 512², batch 8, on an H200, which swapping the sides' order
    moved from one side to the other. Returns the call's time (as ``compile_s`` where ``compiled``, else
    ``first_call_s``) and its peak, ``first_call_peak_gb``."""
    reset_peak_memory(device)
    seconds = first_call_seconds(fn, device)
    peak = peak_memory_gb(device)
    reset_peak_memory(device)
    return {"compile_s" if compiled else "first_call_s": seconds, "first_call_peak_gb": peak}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak allocated memory since the last reset (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def fast_cuda_settings(device: torch.device) -> None:
    """The backend flags every GPU measurement runs with: TF32 matmuls and convolutions, cuDNN autotuning."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def strict_fp32():
    """Full-precision fp32 matmuls and convolutions for a parity check: TF32 (``fast_cuda_settings``) keeps a
    10-bit mantissa, whose rounding alone gives relative errors near 1e-3 on an SD-sized UNet."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def free_memory(device: torch.device) -> None:
    """Drop compiled graphs and cached blocks between measurements."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["gpus_visible"] = torch.cuda.device_count()
    else:
        info["card"] = platform.processor() or platform.machine()
    return info


class Runner:
    """Runs named measurements inside a wall-time budget, keeping going when one fails.

    ``item(path, estimate_s, fn)`` runs ``fn()`` and stores its dict at ``path`` (a tuple of keys) in
    ``results``, unless the time spent so far plus ``estimate_s`` exceeds the budget: then the item is
    listed under ``skipped``. An exception is recorded under ``errors`` (and at ``path``). After every item the
    JSON report is rewritten, so a run killed from outside still leaves what it measured.
    """

    def __init__(self, out: Path, name: str, budget_s: float, meta: dict[str, Any],
                 write_markdown: Callable[[dict[str, Any]], str] | None = None):
        self.out = out
        self.name = name
        self.budget_s = budget_s
        self.started = time.perf_counter()
        self.results: dict[str, Any] = {"meta": meta, "skipped": [], "errors": []}
        self.write_markdown = write_markdown
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def set(self, path: tuple[str, ...], value: Any) -> None:
        node = self.results
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    def item(self, path: tuple[str, ...], estimate_s: float, fn: Callable[[], dict[str, Any]]) -> dict | None:
        label = "/".join(path)
        if self.elapsed() + estimate_s > self.budget_s:
            spent = self.elapsed()
            reason = f"time budget: {spent:.0f}s spent, ~{estimate_s:.0f}s more would pass {self.budget_s:.0f}s"
            self.results["skipped"].append({"item": label, "reason": reason})
            print(f"[skip] {label}: {reason}", flush=True)
            self.save()
            return None
        began = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001  (a failing configuration, e.g. OOM, must not end the run)
            message = f"{type(exc).__name__}: {str(exc)[:400]}"
            self.results["errors"].append({"item": label, "error": message,
                                           "where": traceback.format_exc(limit=-3)[-1200:]})
            self.set(path, {"error": message})
            print(f"[fail] {label}: {message}", flush=True)
            value = None
        else:
            value = dict(value, item_s=round(time.perf_counter() - began, 2))
            self.set(path, value)
            print(f"[done] {label}: {json.dumps(value, default=str)}", flush=True)
        self.save()
        return value

    def skip(self, label: str, reason: str) -> None:
        self.results["skipped"].append({"item": label, "reason": reason})

    def save(self) -> None:
        self.results["meta"]["wall_s"] = round(self.elapsed(), 1)
        (self.out / f"{self.name}.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        if self.write_markdown is not None:
            (self.out / f"{self.name}.md").write_text(self.write_markdown(self.results))


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats get 3 significant digits, missing values a dash."""
    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def get(tree: dict[str, Any], *path: str) -> Any:
    """``tree[path[0]][path[1]]…`` or None where a key is missing."""
    node: Any = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node
