"""Where one training step spends its time: ``torch.profiler`` over a few steps, kernels grouped by what they do.

On CUDA the profile sums the device time of every kernel (``ProfilerActivity.CUDA``); the gap between that and
the step's wall time is time the GPU sat idle waiting for the host (launch overhead). On CPU (smoke tests) it
sums the self time of the operators instead. Kernel names are grouped by pattern: the first group whose pattern
matches wins, so convolutions built from implicit GEMMs count as convolutions, not matrix products.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from measure import synchronize

# (group, pattern over the lower-cased kernel or operator name), first match wins
GROUPS = (
    ("attention", r"flash|fmha|attention|scaled_dot_product|sdpa"),
    ("convolution", r"conv|implicit_gemm|fprop|dgrad|wgrad|winograd"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|\bmm\b|_mm_|addmm|bmm|matmul|linear|triton_tem"),
    ("normalization", r"norm|welford|moments|fusedparams"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    # at::native's copy kernels by their functor name ("gpu_kernel_impl_nocast" is in every elementwise kernel)
    ("layout & copies", r"copy_kernel|catarray|\bcat\b|transpose|permute|contiguous|nchw|nhwc|memcpy|memset|"
                        r"fill|to_copy|clone"),
    ("elementwise & reductions", r"elementwise|vectorized|reduce|triton|silu|gelu|mul|add|sum|mean|mse|sigmoid|exp"),
)


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, lowered):
            return group
    return "other"


def profile_steps(step: Callable[[], Any], device: torch.device, *, steps: int = 3, warmup: int = 2,
                  top: int = 10, origins: bool = False) -> dict[str, Any]:
    """Time per step by kernel group, the ``top`` kernels and, on CUDA, the GPU's idle share of the wall time;
    with ``origins``, also where the copies come from (:func:`copy_origins`; shapes and stacks are recorded,
    which slows the profiled steps' host side).

    ``step`` must already be warm (compiled, autotuned); ``warmup`` more calls run before profiling anyway.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    wall = torch.cuda.Event(enable_timing=True) if cuda else None
    with profile(activities=activities, record_shapes=origins, with_stack=origins) as prof:
        start = torch.cuda.Event(enable_timing=True) if cuda else None
        if start is not None:
            start.record()
        for _ in range(steps):
            step()
        if wall is not None:
            wall.record()
        synchronize(device)
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])  # name -> [µs, calls]
    for event in prof.events():
        if getattr(event, "is_user_annotation", False):
            continue  # a range around kernels counted themselves (e.g. "Optimizer.step#AdamW.step" on the GPU)
        if cuda and event.device_type == DeviceType.CUDA:
            us = event.time_range.elapsed_us()
        elif not cuda and event.device_type == DeviceType.CPU:
            us = event.self_cpu_time_total
        else:
            continue
        per_kernel[event.name][0] += us
        per_kernel[event.name][1] += 1
    kernels = {name: (us / 1e3 / steps, calls / steps) for name, (us, calls) in per_kernel.items()}
    out = summarize(kernels, top)
    out["steps"] = steps
    if origins:
        out["copy_origins"] = copy_origins(prof.events(), cuda, steps, top)
    if start is not None and wall is not None:
        out["wall_ms"] = start.elapsed_time(wall) / steps
        out["idle_share"] = max(0.0, 1 - out["busy_ms"] / out["wall_ms"])
    return out


#: The operators that copy memory from one layout or tensor into another; a copy inside another one
#: (``contiguous`` → ``clone`` → ``copy_``) is counted once, at the outermost.
COPY_OPS = re.compile(r"^aten::(copy_|clone|contiguous|_to_copy|to|cat)$")


def _device_us(event) -> float:
    """Device time of the kernels an operator launched, itself and its children (the attribute's name differs
    between torch versions)."""
    for name in ("device_time_total", "cuda_time_total"):
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def _caller(frames: list[str]) -> str:
    """The innermost source line outside torch itself (a model's line, or a compiled graph's generated code);
    frames are innermost first."""
    lines = [f for f in frames if ".py(" in f and not f.startswith("torch/") and "/torch/" not in f
             and not f.startswith("profile_step.py(")]
    return lines[0] if lines else ""


def _python_frame(event) -> bool:
    """An event ``with_stack`` adds for a Python call ("<built-in method …>", "file.py(12): f", "pytest(6):
    <module>"), not an op."""
    if getattr(event, "is_python_function", False):
        return True
    return event.name.startswith("<") or re.search(r"\(\d+\): ", event.name) is not None


def copy_origins(events, cuda: bool, steps: int, top: int = 10) -> list[dict[str, Any]]:
    """The copy operators of a profile, grouped by operator, input shapes, the operators around it (innermost
    first, up to three: ``aten::convolution_backward < ConvolutionBackward0`` says cuDNN's backward asked for
    another layout) and its caller, ranked by the device time of their kernels per step (CPU: operator time)."""
    rows: dict[tuple[str, str, str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for event in events:
        if event.device_type != DeviceType.CPU or not COPY_OPS.match(event.name):
            continue
        parent = event.cpu_parent
        if parent is not None and COPY_OPS.match(parent.name):
            continue
        us = _device_us(event) if cuda else event.cpu_time_total
        if us <= 0:
            continue  # a copy that launched nothing (a no-op ``to``)
        within, up, frames = [], parent, list(event.stack or [])
        while up is not None:  # enclosing ops, and the Python frames that ``with_stack`` records as events
            if _python_frame(up):
                frames.append(up.name)
            elif len(within) < 3:
                within.append(up.name)
            frames += up.stack or []
            up = up.cpu_parent
        key = (event.name, str(event.input_shapes)[:200], " < ".join(within), _caller(frames))
        rows[key][0] += us
        rows[key][1] += 1
    ranked = sorted(rows.items(), key=lambda kv: -kv[1][0])
    return [{"op": op, "shapes": shapes, "within": within, "caller": caller, "ms": us / 1e3 / steps,
             "calls": calls / steps} for (op, shapes, within, caller), (us, calls) in ranked[:top]]


def summarize(kernels: dict[str, tuple[float, float]], top: int = 10) -> dict[str, Any]:
    """``{kernel name: (ms per step, calls per step)}`` → busy time, time per group, the ``top`` kernels, and
    every kernel under its full name (templated names often differ only after a few hundred characters)."""
    groups: dict[str, float] = defaultdict(float)
    for name, (ms, _) in kernels.items():
        groups[group_of(name)] += ms
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    return {
        "busy_ms": sum(groups.values()),
        "groups_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "top": [{"name": name[:120], "group": group_of(name), "ms": ms, "calls": calls}
                for name, (ms, calls) in ranked[:top]],
        "kernels": {name: [round(ms, 4), calls] for name, (ms, calls) in ranked},
    }


#: GPU-side ranges that torch.profiler reports beside the kernels they contain (filtered by
#: ``is_user_annotation`` now; profiles stored before the filter counted them twice).
ANNOTATIONS = re.compile(r"^(Optimizer\.step#|Optimizer\.zero_grad#|ProfilerStep#)")


def drop_annotations(profile: dict[str, Any]) -> dict[str, Any]:
    """A stored profile without the time of annotation ranges it counted as kernels."""
    out = {**profile, "groups_ms": dict(profile["groups_ms"]), "kernels": dict(profile["kernels"])}
    for name in [n for n in out["kernels"] if ANNOTATIONS.match(n)]:
        ms = out["kernels"].pop(name)[0]
        group = group_of(name)
        out["groups_ms"][group] -= ms
        out["busy_ms"] -= ms
    out["groups_ms"] = dict(sorted(((g, ms) for g, ms in out["groups_ms"].items() if ms > 1e-9),
                                   key=lambda kv: -kv[1]))
    out["top"] = [k for k in profile["top"] if not ANNOTATIONS.match(k["name"])]
    if profile.get("wall_ms"):
        out["idle_share"] = max(0.0, 1 - out["busy_ms"] / profile["wall_ms"])
    return out
